"""Images of a job: pulled when missing, or built from the workspace (`image.build`). Worker process."""

from __future__ import annotations

from typing import Any

from docker.errors import APIError, DockerException, ImageNotFound
from docker.utils import parse_repository_tag

from workers.providers.base import JobContext, ProviderError
from workers.providers.docker.engine import reason


def ensure_image(api: Any, name: str, section: str) -> None:
    """Pull `name` unless it is present locally."""
    try:
        api.inspect_image(name)
        return
    except ImageNotFound:
        pass
    except APIError as exc:
        raise ProviderError(f"cannot inspect image {name!r}: {reason(exc)}", section) from exc
    repo, tag = parse_repository_tag(name)
    try:
        for event in api.pull(repo, tag=tag or "latest", stream=True, decode=True):
            if isinstance(event, dict) and event.get("error"):
                raise ProviderError(f"image {name!r} not found locally and pull failed: {event['error']}", section)
    except (APIError, DockerException) as exc:
        raise ProviderError(f"image {name!r} not found locally and pull failed: {reason(exc)}", section) from exc


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

