"""Images of a job: pulled when missing, or built from the workspace (`image.build`). Worker process."""

from __future__ import annotations

from typing import Any

from docker.auth import resolve_repository_name
from docker.errors import APIError, DockerException, ImageNotFound
from docker.utils import parse_repository_tag

from workers.providers.base import JobContext, ProviderError, SectionLog
from workers.providers.docker.engine import reason


def ensure_image(api: Any, name: str, section: str, log: SectionLog | None = None) -> None:
    """Pull `name` unless it is present locally. A failure names the image and says why in words;
    the engine's own text goes to `log`."""
    try:
        api.inspect_image(name)
        return
    except ImageNotFound:
        pass
    except APIError as exc:
        raise ProviderError(f"image {name!r} cannot be used: {reason(exc)}", section) from exc
    repo, tag = parse_repository_tag(name)
    try:
        for event in api.pull(repo, tag=tag or "latest", stream=True, decode=True):
            if isinstance(event, dict) and event.get("error"):
                raise ProviderError(_pull_failed(name, str(event["error"]), log), section)
    except (APIError, DockerException) as exc:
        text = str(exc.explanation or "") if isinstance(exc, APIError) else ""
        raise ProviderError(_pull_failed(name, text or reason(exc), log), section) from exc


# What the engine says when a pull fails (Go error text), and the same in words.
_PULL_CAUSES = (
    (("no such host", "server misbehaving", "network is unreachable"),
     "registry {0} cannot be reached (its name does not resolve or there is no network)"),
    (("connection refused",), "registry {0} refused the connection"),
    (("i/o timeout", "timeout exceeded", "deadline exceeded"), "registry {0} did not answer in time"),
    (("pull access denied", "repository does not exist", "requested access to the resource is denied"),
     "registry {0} has no such repository, or it needs `docker login`"),
    (("unauthorized", "authentication required"), "registry {0} wants credentials (`docker login {0}`)"),
    (("manifest unknown", "not found"), "registry {0} has no such tag"),
)


def _pull_failed(name: str, text: str, log: SectionLog | None) -> str:
    if log is not None and text:
        log.line(f"pull of {name}: {text}", "stderr")
    registry = resolve_repository_name(parse_repository_tag(name)[0])[0]
    lowered = text.lower()
    cause = next((words.format(registry) for needles, words in _PULL_CAUSES
                  if any(n in lowered for n in needles)), " ".join(text.split())[:300] or "no reason given")
    return f"image {name!r} not found locally and pull failed: {cause}"


def build_image(api: Any, ctx: JobContext) -> None:
    """`image.build`: build the job's image from the workspace, logging into the `image_build` section."""
    image = ctx.job.image
    assert image is not None and image.build is not None
    context = (ctx.workspace / image.build.context).resolve()
    dockerfile = context / image.build.dockerfile
    if not dockerfile.is_file():
        dockerfile = (ctx.workspace / image.build.dockerfile).resolve()
    with ctx.sections.section("image_build") as log:
        log.line(f"building {image.name} from {image.build.context} ({image.build.dockerfile})")
        if not context.is_dir() or not dockerfile.is_file():
            raise ProviderError(
                f"image build failed: context {image.build.context!r} or dockerfile "
                f"{image.build.dockerfile!r} not found in the workspace",
                "image_build",
            )
        try:
            stream = api.build(
                path=str(context), dockerfile=str(dockerfile), tag=image.name, rm=True, forcerm=True,
                decode=True, timeout=3600,
            )  # fmt: skip
            for event in stream:
                _log_build_event(log, event)
        except (APIError, DockerException) as exc:
            raise ProviderError(f"image build failed: {reason(exc)}", "image_build") from exc


def _log_build_event(log: Any, event: Any) -> None:
    if not isinstance(event, dict):
        return
    if event.get("error"):
        message = str(event["error"]).strip()
        log.line(message, "stderr")
        raise ProviderError(f"image build failed: {message}", "image_build")
    for text in str(event.get("stream") or "").splitlines():
        if text.strip():
            log.line(text)

