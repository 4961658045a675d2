"""The Docker provider: one container per job, each step an exec inside it. Runs in the worker process.

Owns every engine object of one job: the job container, its workspace volume (`ephemeral_volume`),
the per-job network and the service containers, all labelled `loom.run_id` / `loom.job_id` and
removed by `cleanup`. Talks to the engine only through the Docker SDK (low-level `APIClient`), with a
timeout on every call. Also holds `reap_leftovers` / `reap_run`, which the supervisor runs in a
short-lived child process (the supervisor itself never imports `docker`).

The container starts idle: its entrypoint is a small `/bin/sh` loop (the steps need `sh` anyway)
that, on SIGTERM, forwards TERM to every process of the container and exits once they are gone, so
`docker stop` gives the steps the grace period and the engine's SIGKILL ends the rest.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import Mount
from docker.utils import parse_repository_tag

from loomrun.globs import check_pattern, match_paths
from loomrun.workflow.model import Service
from workers.providers.base import JobContext, ProviderError

WORKDIR = "/workspace"
RUN_LABEL = "loom.run_id"
JOB_LABEL = "loom.job_id"
RUNTIME_LABEL = "loom.runtime"  # the .loom/.runtime folder of the run's repo
IDLE_ENTRYPOINT = [
    "/bin/sh",
    "-c",
    "trap 'kill -TERM -1 2>/dev/null; while kill -0 -1 2>/dev/null; do sleep 0.1; done; exit 0' TERM; "
    "echo loom-idle; while :; do sleep 3600 & wait; done",
]
IDLE_MARK = b"loom-idle"
CHUNK = 1 << 20
API_VERSION = "1.41"
GLOB_CHARS = frozenset("*?[")


# ---- engine connection -----------------------------------------------------------------------


def connect(timeout_s: float = 60.0) -> Any:
    """A low-level client for DOCKER_HOST (or the default socket); ProviderError when it does not answer.

    The API version is fixed (`DOCKER_API_VERSION`, else 1.41: Docker 20.10 and every engine since)
    instead of asked for, which saves a round trip per connection; an older engine refuses the ping,
    and then the version is negotiated after all."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        try:
            client = docker.from_env(version=os.environ.get("DOCKER_API_VERSION") or API_VERSION,
                                     timeout=math.ceil(timeout_s))
            client.api.ping()
        except APIError:
            client = docker.from_env(version="auto", timeout=math.ceil(timeout_s))
            client.api.ping()
    except DockerException as exc:  # also covers requests' ConnectionError wrapped by the SDK
        raise ProviderError(f"Docker daemon unreachable at {where}: {_reason(exc)}") from exc
    except OSError as exc:
        raise ProviderError(f"Docker daemon unreachable at {where}: {exc}") from exc
    return client.api


def _reason(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return str(exc.explanation or exc)
    return str(exc).strip() or type(exc).__name__


def _labels(ctx: JobContext, role: str) -> dict[str, str]:
    labels = {RUN_LABEL: ctx.run_id, JOB_LABEL: ctx.env.get("LOOM_JOB_ID", ctx.job.name)}
    labels.update(ctx.labels)
    labels["loom.role"] = role
    return labels


def _object_name(ctx: JobContext, suffix: str = "") -> str:
    return f"{ctx.run_id}-{ctx.job.name}{suffix}"


# ---- images ----------------------------------------------------------------------------------


def _ensure_image(api: Any, name: str, section: str) -> None:
    """Pull `name` unless it is present locally."""
    try:
        api.inspect_image(name)
        return
    except ImageNotFound:
        pass
    except APIError as exc:
        raise ProviderError(f"cannot inspect image {name!r}: {_reason(exc)}", section) from exc
    repo, tag = parse_repository_tag(name)
    try:
        for event in api.pull(repo, tag=tag or "latest", stream=True, decode=True):
            if isinstance(event, dict) and event.get("error"):
                raise ProviderError(f"image {name!r} not found locally and pull failed: {event['error']}", section)
    except (APIError, DockerException) as exc:
        raise ProviderError(f"image {name!r} not found locally and pull failed: {_reason(exc)}", section) from exc


def _build_image(api: Any, ctx: JobContext) -> None:
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
            raise ProviderError(f"image build failed: {_reason(exc)}", "image_build") from exc


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


# ---- workspace archives ----------------------------------------------------------------------


def tar_stream(src: Path) -> Iterator[bytes]:
    """The contents of `src` as a tar stream (GNU tar: several times faster than `tarfile` here)."""
    proc = subprocess.Popen(
        ["tar", "-C", str(src), "--numeric-owner", "-cf", "-", "."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := proc.stdout.read(CHUNK):
            yield chunk
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        if proc.wait() != 0:
            raise ProviderError(f"could not archive the workspace {src}: {err}")


class _ChunkReader:
    """A read()-able view of the SDK's chunk iterator, for `tarfile` in stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buf += chunk
        if size < 0:
            size = len(self._buf)
        out, self._buf = self._buf[:size], self._buf[size:]
        return out


def _fetch(api: Any, container: str, path: str, into: Path) -> bool:
    """Extract `path` of the container (a file or folder, named by its basename) into `into`."""
    try:
        chunks, _stat = api.get_archive(container, path, chunk_size=CHUNK)
    except NotFound:
        return False
    with tarfile.open(fileobj=_ChunkReader(iter(chunks)), mode="r|") as archive:  # type: ignore[call-overload]
        archive.extractall(into, filter="tar")
    return True


def _top_components(patterns: Sequence[str]) -> list[str] | None:
    """First path parts the patterns can match under, or None when one starts with a wildcard."""
    tops: set[str] = set()
    for pattern in patterns:
        first = check_pattern(pattern).split("/", 1)[0]
        if first in (".", "") or GLOB_CHARS & set(first):
            return None
        tops.add(first)
    return sorted(tops)


def _matches(root: Path, patterns: Sequence[str], exclude: Sequence[str]) -> list[str]:
    # glob.glob("missing/**", recursive=True) yields "missing/": keep only what exists.
    return [rel for rel in match_paths(root, patterns, exclude) if os.path.lexists(root / rel)]


def _place(src: Path, dest: Path, move: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    if move:
        os.replace(src, dest)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dest)
    else:
        shutil.copy2(src, dest)


# ---- steps -----------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        return False  # the reader is gone; keep draining the exec so it can finish
    return True


class DockerStep:
    """One exec: a pump thread copies its demuxed output into the step's fds as it arrives.

    The handle owns the two fds (as the host provider does, the caller hands them over) and closes
    them when the exec's output ends, so the reader sees EOF.
    """

    def __init__(self, api: Any, exec_id: str, stream: Iterator[Any], stdout_fd: int, stderr_fd: int) -> None:
        self._api = api
        self._exec_id = exec_id
        self._fds = (stdout_fd, stderr_fd)
        self._read, self._write = os.pipe()
        self._done = threading.Event()
        self._code: int | None = None
        self._thread = threading.Thread(target=self._pump, args=(stream,), name=f"exec-{exec_id[:12]}", daemon=True)
        self._thread.start()

    @property
    def sentinel(self) -> int:
        return self._read

    def poll(self) -> int | None:
        return self._code if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int | None:
        self._done.wait(timeout)
        return self.poll()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._read)

    def _pump(self, stream: Iterator[Any]) -> None:
        code = 255
        try:
            for out, err in stream:
                if out:
                    _write_all(self._fds[0], out)
                if err:
                    _write_all(self._fds[1], err)
            code = self._exit_code()
        except Exception as exc:  # the engine went away mid-step: say so in the step's own stderr
            _write_all(self._fds[1], f"loom: lost the Docker engine during the step: {_reason(exc)}\n".encode())
        finally:
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._code = code
            self._done.set()
            with contextlib.suppress(OSError):
                os.write(self._write, b"x")
            with contextlib.suppress(OSError):
                os.close(self._write)

    def _exit_code(self) -> int:
        # The stream can end a moment before the engine records the exit code.
        for _ in range(50):
            info = self._api.exec_inspect(self._exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            time.sleep(0.02)
        return 137  # still unknown: the container was killed under the exec


# ---- the provider ----------------------------------------------------------------------------


class DockerProvider:
    """`Provider` for jobs with an image. Per-job ids live in `ctx.state` (all plain strings)."""

    name: ClassVar[str] = "docker"

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self._api: Any = None

    def api(self) -> Any:
        if self._api is None:
            self._api = connect(self.timeout_s)
        return self._api

    # -- prepare --

    def prepare(self, ctx: JobContext) -> None:
        api = self.api()
        image = ctx.job.image
        if image is None or not image.name:
            raise ProviderError(f"job {ctx.job.name!r} has no image")
        if image.build is not None:
            _build_image(api, ctx)
        else:
            _ensure_image(api, image.name, "provider")
        if ctx.job.services:
            self._start_services(api, ctx)
        self._create_job_container(api, ctx)

    def _start_services(self, api: Any, ctx: JobContext) -> None:
        with ctx.sections.section("services") as log:
            try:
                network = api.create_network(_object_name(ctx), driver="bridge", labels=_labels(ctx, "network"))
            except (APIError, DockerException) as exc:
                raise ProviderError(f"cannot create the job's network: {_reason(exc)}", "services") from exc
            ctx.state["network"] = network["Id"]
            ctx.state["services"] = []
            for i, service in enumerate(ctx.job.services):
                self._start_service(api, ctx, i, service)
                log.line(f"started {service.name} as {service.hostname}")

    def _start_service(self, api: Any, ctx: JobContext, i: int, service: Service) -> None:
        _ensure_image(api, service.name, "services")
        endpoint = api.create_endpoint_config(aliases=[service.hostname])
        try:
            created = api.create_container(
                service.name,
                name=_object_name(ctx, f"-svc{i}-{service.hostname}"),
                hostname=service.hostname,
                environment=dict(service.variables),
                labels=_labels(ctx, "service"),
                host_config=api.create_host_config(network_mode=ctx.state["network"], privileged=False),
                networking_config=api.create_networking_config({ctx.state["network"]: endpoint}),
            )
            ctx.state["services"].append(created["Id"])
            api.start(created["Id"])
        except (APIError, DockerException) as exc:
            raise ProviderError(f"service {service.name!r} failed to start: {_reason(exc)}", "services") from exc

    def _create_job_container(self, api: Any, ctx: JobContext) -> None:
        assert ctx.job.image is not None
        binds: dict[str, dict[str, str]] = {}
        mounts: list[Mount] = []
        if ctx.mount_mode == "bind_mount":
            binds[str(ctx.workspace)] = {"bind": WORKDIR, "mode": "rw"}
        elif ctx.mount_mode == "ephemeral_volume":
            # An anonymous volume made with the container and removed with it (`v=True`): two engine
            # round trips fewer than a named one. Labelled like everything else, for the leftover sweep.
            mounts.append(Mount(WORKDIR, None, type="volume", labels=_labels(ctx, "workspace")))
        else:
            raise ProviderError(f"unknown workspace mount mode {ctx.mount_mode!r}")
        for host_file, inner in ctx.secret_mounts.items():
            binds[host_file] = {"bind": inner, "mode": "ro"}
        limits = ctx.job.limits
        host_config = api.create_host_config(
            binds=binds,
            mounts=mounts or None,
            network_mode=ctx.state.get("network"),
            mem_limit=limits.memory_bytes,
            memswap_limit=limits.memory_bytes,  # no swap: over the limit means OOM-killed
            nano_cpus=int(limits.cpus * 1e9) if limits.cpus else None,
            pids_limit=limits.pids,
            privileged=False,
        )
        try:
            created = api.create_container(
                ctx.job.image.name, name=_object_name(ctx), entrypoint=IDLE_ENTRYPOINT, command=[],
                working_dir=WORKDIR, environment=dict(ctx.env), labels=_labels(ctx, "job"),
                host_config=host_config,
            )  # fmt: skip
        except APIError as exc:
            raise ProviderError(f"cannot create the job container: {_reason(exc)}") from exc
        ctx.state["container"] = created["Id"]
        ctx.state["created_at"] = time.time() - 1
        if ctx.mount_mode == "ephemeral_volume":
            self._seed(api, ctx)
        self._start(api, ctx)

    def _seed(self, api: Any, ctx: JobContext) -> None:
        """Copy the workspace into the volume through the created (not yet started) container."""
        try:
            api.put_archive(ctx.state["container"], WORKDIR, tar_stream(ctx.workspace))
        except (APIError, DockerException) as exc:
            raise ProviderError(f"cannot seed the workspace volume: {_reason(exc)}") from exc

    def _start(self, api: Any, ctx: JobContext) -> None:
        """Start the job container and wait for its idle loop's first line (or its death)."""
        cid = ctx.state["container"]
        try:
            api.start(cid)
            # The engine reports a failed exec of the entrypoint (exec format error, no /bin/sh) only
            # as the container's output and exit; following the log tells up or down without polling.
            logs = api.logs(cid, stdout=True, stderr=True, stream=True, follow=True)
            try:
                seen = b""
                for chunk in logs:
                    seen += chunk
                    if IDLE_MARK in seen:
                        return
            finally:
                logs.close()
        except APIError as exc:
            seen = str(_reason(exc)).encode()
        self._died_at_start(api, ctx, seen.decode(errors="replace").strip())

    def _died_at_start(self, api: Any, ctx: JobContext, output: str) -> None:
        image = ctx.job.image.name if ctx.job.image else ""
        try:
            code = api.inspect_container(ctx.state["container"])["State"].get("ExitCode")
        except (APIError, DockerException):
            code = None
        if "exec format error" in output:
            raise ProviderError(
                f"exec format error: image {image!r} cannot run /bin/sh on this machine "
                f"(built for another platform, or not a program): {output}"
            )
        raise ProviderError(f"the job container of image {image!r} did not start (exit code {code}): {output}")

    # -- steps --

    def start_step(self, ctx: JobContext, index: int, command: str, stdout_fd: int, stderr_fd: int) -> DockerStep:
        api = self.api()
        argv = ["/bin/sh", "-x", "-c", command] if ctx.trace else ["/bin/sh", "-c", command]
        try:
            exec_id = api.exec_create(ctx.state["container"], argv, workdir=WORKDIR)["Id"]
            stream = api.exec_start(exec_id, stream=True, demux=True)
        except (APIError, DockerException) as exc:
            os.close(stdout_fd)
            os.close(stderr_fd)
            raise ProviderError(f"cannot start step {index + 1}: {_reason(exc)}") from exc
        return DockerStep(api, exec_id, stream, stdout_fd, stderr_fd)

    def stop(self, ctx: JobContext, grace_s: float) -> None:
        try:
            api = self.api()
        except ProviderError:
            return  # no engine, nothing of ours can be running there any more
        ids = [ctx.state.get("container"), *ctx.state.get("services", [])]
        for cid in ids:
            if not cid:
                continue
            with contextlib.suppress(APIError, DockerException):
                api.stop(cid, timeout=max(0, math.ceil(grace_s)))
            with contextlib.suppress(APIError, DockerException):
                if api.inspect_container(cid)["State"].get("Running"):
                    api.kill(cid)

    # -- workspace transfer --

    def import_tree(self, ctx: JobContext, src: Path) -> None:
        if ctx.mount_mode == "bind_mount":
            shutil.copytree(src, ctx.workspace, symlinks=True, dirs_exist_ok=True)
            return
        try:
            self.api().put_archive(ctx.state["container"], WORKDIR, tar_stream(src))
        except (APIError, DockerException) as exc:
            raise ProviderError(f"cannot copy {src} into the job's workspace: {_reason(exc)}") from exc

    def export_paths(self, ctx: JobContext, patterns: Sequence[str], exclude: Sequence[str], dest: Path) -> list[str]:
        if ctx.mount_mode == "bind_mount":
            found = _matches(ctx.workspace, patterns, exclude)
            for rel in found:
                _place(ctx.workspace / rel, dest / rel, move=False)
            return found
        if not patterns:
            return []
        tops = _top_components(patterns)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".loom-export-") as tmp:
            root = Path(tmp) / "workspace"
            try:
                self._fetch_workspace(ctx, tops, Path(tmp), root)
            except (APIError, DockerException, tarfile.TarError) as exc:
                raise ProviderError(f"cannot copy files out of the job's workspace: {_reason(exc)}") from exc
            found = _matches(root, patterns, exclude)
            for rel in found:
                _place(root / rel, dest / rel, move=True)
        return found

    def _fetch_workspace(self, ctx: JobContext, tops: list[str] | None, tmp: Path, root: Path) -> None:
        """Extract the part of /workspace the patterns can reach into `root` (all of it when unknown)."""
        api, cid = self.api(), ctx.state["container"]
        if tops is None:
            _fetch(api, cid, WORKDIR, tmp)
            root.mkdir(exist_ok=True)
            return
        root.mkdir()
        for top in tops:
            _fetch(api, cid, f"{WORKDIR}/{top}", root)

    # -- outcome and cleanup --

    def memory_exceeded(self, ctx: JobContext) -> bool:
        cid = ctx.state.get("container")
        if not cid:
            return False
        api = self.api()
        try:
            if api.inspect_container(cid)["State"].get("OOMKilled"):
                return True
            # OOMKilled is only set once the container exits; an exec killed while it runs shows as an event.
            events = api.events(
                since=int(ctx.state.get("created_at", 0)), until=time.time(),
                filters={"container": cid, "event": "oom"}, decode=True,
            )  # fmt: skip
            return any(True for _ in events)
        except (APIError, DockerException):
            return False

    def pids_exceeded(self, ctx: JobContext) -> bool:
        # The engine keeps no record of a refused fork; a job over `limits.pids` fails by its own exit code.
        return False

    def peak_memory(self, ctx: JobContext) -> int | None:
        return None  # the engine's stats stream would cost a request per tick; not worth it here

    def cleanup(self, ctx: JobContext) -> None:
        try:
            api = self.api()
        except ProviderError:
            return
        for cid in [ctx.state.get("container"), *ctx.state.get("services", [])]:
            if cid:
                with contextlib.suppress(Exception):
                    api.remove_container(cid, force=True, v=True)  # v: the anonymous workspace volume
        if ctx.state.get("network"):
            with contextlib.suppress(Exception):
                api.remove_network(ctx.state["network"])


# ---- leftovers (run in a short-lived child of the supervisor) --------------------------------


def reap_leftovers(alive_run_ids: Collection[str], prefix: str = "", timeout_s: float = 30.0) -> list[str]:
    """Remove containers, networks and volumes labelled `loom.run_id` of runs that no longer exist.

    A run is alive when it is in `alive_run_ids` (the caller's own repo) or when the `loom.runtime`
    label names the runtime folder of another repo whose lock for that run is still held: runs of
    other repos on the same engine are left alone. Only run ids starting with `prefix` are considered.
    Returns what was removed, e.g. `container loom-run-local-1-build`. ProviderError: engine unreachable.
    """
    alive = set(alive_run_ids)

    def doomed(labels: dict[str, str]) -> bool:
        run_id = labels.get(RUN_LABEL, "")
        if not run_id.startswith(prefix) or run_id in alive:
            return False
        return not _held_elsewhere(labels.get(RUNTIME_LABEL, ""), run_id)

    return _reap(connect(timeout_s), [RUN_LABEL], doomed)


def _held_elsewhere(runtime: str, run_id: str) -> bool:
    """True when the run's lock file in `runtime` (see loomrun.supervisor.locks) has a live owner."""
    from filelock import FileLock, Timeout

    path = Path(runtime) / "runs" / f"{run_id}.lock" if runtime else None
    if path is None or not path.is_file():
        return False
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return True  # cannot tell: keep what may belong to a live run
    lock.release()
    return False


def reap_run(run_id: str, job_id: str | None = None, timeout_s: float = 30.0) -> list[str]:
    """Remove everything labelled with this run (and job, when given)."""
    wanted = [f"{RUN_LABEL}={run_id}"] + ([f"{JOB_LABEL}={job_id}"] if job_id else [])
    return _reap(connect(timeout_s), wanted, lambda _labels: True)


def _reap(api: Any, label_filter: list[str], doomed: Callable[[dict[str, str]], bool]) -> list[str]:
    removed: list[str] = []
    for c in api.containers(all=True, filters={"label": label_filter}):
        if doomed(c.get("Labels") or {}):
            with contextlib.suppress(APIError, DockerException):
                api.remove_container(c["Id"], force=True)
                removed.append(f"container {(c.get('Names') or [c['Id']])[0].lstrip('/')}")
    for n in api.networks(filters={"label": label_filter}):
        if doomed(n.get("Labels") or {}):
            with contextlib.suppress(APIError, DockerException):
                api.remove_network(n["Id"])
                removed.append(f"network {n['Name']}")
    for v in api.volumes(filters={"label": label_filter}).get("Volumes") or []:
        if doomed(v.get("Labels") or {}):
            with contextlib.suppress(APIError, DockerException):
                api.remove_volume(v["Name"], force=True)
                removed.append(f"volume {v['Name']}")
    return removed
