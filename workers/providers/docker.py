"""The Docker provider: one container per job, its steps run by its shell. Runs in the worker process.

Owns every engine object of one job: the job container, its workspace volume (`ephemeral_volume`),
the per-job network and the service containers, all labelled `loom.run_id` / `loom.job_id` and
removed by `cleanup`. Talks to the engine only through the Docker SDK (low-level `APIClient`), with a
timeout on every call. Also holds `reap_leftovers` / `reap_run`, which the supervisor runs in a
short-lived child process (the supervisor itself never imports `docker`).

The container's main process is `/bin/sh` reading commands from the attach socket (the steps need
`sh` anyway): each step is one line sent to it (`_Session`), a step whose command holds control
characters an exec. On SIGTERM the shell forwards TERM to every process of the container and exits
once they are gone, so `docker stop` gives the steps the grace period and the engine's SIGKILL ends
the rest; a stop during a step first sends TERM to the step (the shell would act only after it).
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
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
from docker.utils.socket import STDERR, STDOUT, frames_iter

from loomrun.globs import check_pattern, match_paths
from loomrun.workflow.model import Service
from workers import jobserver
from workers.providers.base import JobContext, ProviderError

WORKDIR = "/workspace"
RUN_LABEL = "loom.run_id"
JOB_LABEL = "loom.job_id"
RUNTIME_LABEL = "loom.runtime"  # the .loom/.runtime folder of the run's repo
# The job container's main process: a shell that reads its commands from the attach socket (stdin).
SESSION_ENTRYPOINT = ["/bin/sh"]
# First thing sent to it: on TERM (`docker stop`), forward TERM to every process of the container and
# exit once they are gone, so the steps get the grace period and the engine's SIGKILL ends the rest.
# Its own messages (a shell reports a child killed by a signal: "Terminated") go nowhere; fd 3 is the
# container's stderr, which the steps get.
PREAMBLE = (
    "trap 'kill -TERM -1 2>/dev/null; while kill -0 -1 2>/dev/null; do sleep 0.1; done; exit 0' TERM\n"
    "exec 3>&2 2>/dev/null\n"
    "echo loom-idle\n"
)
IDLE_MARK = b"loom-idle"
# Bytes a step command may not carry over the attach socket (the engine's detach keys are control
# characters): such a step runs as an exec instead.
_RAW_UNSAFE = frozenset(chr(c) for c in range(32) if chr(c) not in "\t\n") | {"\x7f"}
CHUNK = 1 << 20
API_VERSION = "1.41"
SEED_DIR = "/.loom-seed"  # ephemeral_volume on a local engine: the snapshot, read-only, to copy from
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


def _engine_is_local() -> bool:
    """The engine sees this machine's files (a bind mount of the snapshot means the same folder)."""
    host = os.environ.get("DOCKER_HOST", "")
    return host == "" or host.startswith("unix://")


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


class _StepEnd:
    """How a step run by another thread ends: `sentinel` is the read end of a pipe that gets one byte
    when the step is over. The byte is written and the write end closed before `wait()` returns, so
    a caller may close the read end at once (a write to a closed pipe would kill the worker with
    SIGPIPE); `poll()` answers from the moment the byte is on its way."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._done = threading.Event()
        self._finished = False
        self.code: int | None = None

    @property
    def sentinel(self) -> int:
        return self._read

    def poll(self) -> int | None:
        return self.code if self._finished else None

    def wait(self, timeout: float | None = None) -> int | None:
        self._done.wait(timeout)
        return self.poll()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._read)

    def _end(self, code: int) -> None:
        if self._finished:
            return
        self.code = code
        self._finished = True
        with contextlib.suppress(OSError):
            os.write(self._write, b"x")
        with contextlib.suppress(OSError):
            os.close(self._write)
        self._done.set()


class _ExecStep(_StepEnd):
    """One exec (steps the session cannot carry): a pump thread copies its demuxed output into the
    step's fds as it arrives.

    The handle owns the two fds (as the host provider does, the caller hands them over) and closes
    them when the exec's output ends, so the reader sees EOF.
    """

    def __init__(self, api: Any, exec_id: str, stream: Iterator[Any], stdout_fd: int, stderr_fd: int) -> None:
        super().__init__()
        self._api = api
        self._exec_id = exec_id
        self._fds = (stdout_fd, stderr_fd)
        self._thread = threading.Thread(target=self._pump, args=(stream,), name=f"exec-{exec_id[:12]}", daemon=True)
        self._thread.start()

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
            self._end(code)

    def _exit_code(self) -> int:
        # The stream can end a moment before the engine records the exit code.
        for _ in range(50):
            info = self._api.exec_inspect(self._exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            time.sleep(0.02)
        return 137  # still unknown: the container was killed under the exec


class _Session:
    """The job container's `/bin/sh`, fed through the attach socket: one step is one line of shell
    sent to it, so a step costs a write instead of an exec round trip (~40 ms of the engine's time).

    One reader thread demultiplexes the attach stream for the container's life and routes it to the
    step in flight. The shell ends each step by printing a marker with a per-container nonce on
    stdout (with the exit code) and on stderr; everything before a stream's marker is the step's.
    """

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.raw = getattr(sock, "_sock", sock)
        self.raw.settimeout(None)  # a step may be silent for longer than the client's timeout
        self.nonce = b"loom-" + os.urandom(16).hex().encode()
        self.cond = threading.Condition()
        self.up = False  # the idle mark was seen
        self.ended = False  # the attach stream ended: the container's shell is gone
        self.early = bytearray()  # output before the idle mark (why a container did not start)
        self.step: _SessionStep | None = None
        self.pending: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray()}
        self.thread = threading.Thread(target=self._read, name="docker-attach", daemon=True)
        self.thread.start()

    def send(self, text: str) -> None:
        self.raw.sendall(text.encode())

    def wait_up(self, timeout_s: float) -> bool:
        with self.cond:
            self.cond.wait_for(lambda: self.up or self.ended, timeout_s)
            return self.up

    def run(self, command: str, trace: bool, stdout_fd: int, stderr_fd: int) -> _SessionStep:
        step = _SessionStep(self, stdout_fd, stderr_fd)
        quoted = "'" + command.replace("'", "'\\''") + "'"
        nonce = self.nonce.decode()
        line = (f"/bin/sh {'-x ' if trace else ''}-c {quoted} </dev/null 2>&3 3>&-; loom_rc=$?; "
                f"printf '%s %d\\n' {nonce} \"$loom_rc\"; printf '%s\\n' {nonce} >&3\n")
        with self.cond:
            if self.ended:
                step.lost()
                return step
            step.buf = {k: bytearray(v) for k, v in self.pending.items()}  # stray output of an earlier step
            for v in self.pending.values():
                v.clear()
            self.step = step
        try:
            self.send(line)
        except OSError:  # the shell is gone: the step ends here, unless the reader already ended it
            with self.cond:
                mine = self.step is step
                if mine:
                    self.step = None
            if mine:
                step.lost()
        return step

    def call(self, command: str) -> tuple[int, str]:
        """Run a command of loom's own to its end: (exit code, stdout and stderr)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        step = self.run(command, False, out_w, err_w)
        chunks: list[bytes] = []
        with selectors.DefaultSelector() as sel:
            for fd in (out_r, err_r):
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map():
                for key, _ in sel.select():
                    data = os.read(key.fd, CHUNK)
                    if data:
                        chunks.append(data)
                    else:
                        sel.unregister(key.fd)
                        os.close(key.fd)
        code = step.wait()
        step.close()
        return (255 if code is None else code), b"".join(chunks).decode(errors="replace")

    def finished(self, step: _SessionStep, after: dict[int, bytearray]) -> None:
        with self.cond:
            if self.step is step:
                self.step = None
                for k, v in after.items():
                    self.pending[k] += v

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.raw.shutdown(2)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.thread.join(5.0)

    def _read(self) -> None:
        try:
            for stream, data in frames_iter(self.sock, tty=False):  # type: ignore[no-untyped-call]
                if stream in (STDOUT, STDERR) and data:
                    self._route(stream, data)
        except Exception:  # the socket closed under us (cleanup) or the engine went away
            pass
        finally:
            with self.cond:
                self.ended = True
                step, self.step = self.step, None
                self.cond.notify_all()
            if step is not None:
                step.lost()

    def _route(self, stream: int, data: bytes) -> None:
        with self.cond:
            if not self.up:
                self.early += data
                if stream == STDOUT and IDLE_MARK + b"\n" in self.early:
                    self.up = True
                    self.cond.notify_all()
                return
            step = self.step
            if step is None:
                self.pending[stream] += data
                return
        step.feed(stream, data)


class _SessionStep(_StepEnd):
    """A step run by the container's shell. Owns its two fds, closes each when its stream's marker
    arrives (so the reader sees EOF), and ends with the exit code the marker carries."""

    def __init__(self, session: _Session, stdout_fd: int, stderr_fd: int) -> None:
        super().__init__()
        self.session = session
        self.fds = {STDOUT: stdout_fd, STDERR: stderr_fd}
        self.buf: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray()}
        self.after: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray()}
        self.open = {STDOUT: True, STDERR: True}
        self.marked: int | None = None  # the exit code the stdout marker carried

    def feed(self, stream: int, data: bytes) -> None:
        if not self.open[stream]:
            self.after[stream] += data
            return
        buf = self.buf[stream]
        buf += data
        mark = self.session.nonce  # wherever it starts: a last line without a newline ends right before it
        at = buf.find(mark)
        if at < 0:
            keep = _prefix_at_end(buf, mark)  # a marker may be split across frames: hold back only that
            if len(buf) > keep:
                _write_all(self.fds[stream], bytes(buf[: len(buf) - keep]))
                del buf[: len(buf) - keep]
            return
        tail = bytes(buf[at + len(mark):])
        end = tail.find(b"\n")
        if end < 0:  # the rest of the marker line is still on its way
            if at:
                _write_all(self.fds[stream], bytes(buf[:at]))
                del buf[:at]
            return
        _write_all(self.fds[stream], bytes(buf[:at]))
        if stream == STDOUT:
            try:
                self.marked = int(tail[:end].strip())
            except ValueError:
                self.marked = 255
        buf.clear()
        self.after[stream] += tail[end + 1:]
        self._close_stream(stream)
        if not any(self.open.values()):
            self.session.finished(self, self.after)
            self._end(255 if self.marked is None else self.marked)

    def lost(self) -> None:
        """The container's shell is gone (killed, stopped, the engine went away) mid-step."""
        for stream in (STDOUT, STDERR):
            if self.open[stream]:
                if self.buf[stream]:
                    _write_all(self.fds[stream], bytes(self.buf[stream]))
                self._close_stream(stream)
        self._end(137 if self.marked is None else self.marked)

    def _close_stream(self, stream: int) -> None:
        self.open[stream] = False
        with contextlib.suppress(OSError):
            os.close(self.fds[stream])


DockerStep = _SessionStep | _ExecStep


def _prefix_at_end(buf: bytearray, mark: bytes) -> int:
    """Length of the longest end of `buf` that is a proper beginning of `mark` (0 if none)."""
    start = max(0, len(buf) - len(mark) + 1)
    at = buf.find(mark[:1], start)
    while at >= 0:
        if mark.startswith(bytes(buf[at:])):
            return len(buf) - at
        at = buf.find(mark[:1], at + 1)
    return 0


# ---- the provider ----------------------------------------------------------------------------


class DockerProvider:
    """`Provider` for jobs with an image. Per-job ids live in `ctx.state` (all plain strings)."""

    name: ClassVar[str] = "docker"

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self._api: Any = None
        self._sessions: dict[str, _Session] = {}  # job container id -> its shell

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
        seed_by_copy = ctx.mount_mode == "ephemeral_volume" and _engine_is_local()
        if seed_by_copy:
            binds[str(ctx.workspace)] = {"bind": SEED_DIR, "mode": "ro"}
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
        binds.update(jobserver.docker_binds(ctx, _engine_is_local()))  # spec §13
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
                ctx.job.image.name, name=_object_name(ctx), entrypoint=SESSION_ENTRYPOINT, command=[],
                working_dir=WORKDIR, environment=dict(ctx.env), labels=_labels(ctx, "job"),
                host_config=host_config, stdin_open=True,  # (also StdinOnce: our detach ends its stdin)
            )  # fmt: skip
        except APIError as exc:
            raise ProviderError(f"cannot create the job container: {_reason(exc)}") from exc
        ctx.state["container"] = created["Id"]
        ctx.state["created_at"] = time.time() - 1
        if ctx.mount_mode == "ephemeral_volume" and not seed_by_copy:
            self._seed(api, ctx)
        self._start(api, ctx)
        if seed_by_copy:
            self._seed_by_copy(api, ctx)
        jobserver.docker_enable(ctx, self._sessions.get(ctx.state["container"]))

    def _seed_by_copy(self, api: Any, ctx: JobContext) -> None:
        """Seed the volume from inside the container: the snapshot is bind-mounted read-only at
        `SEED_DIR` and one `cp -a` goes through the container's shell. `put_archive` makes dockerd
        untar through a chrooted helper: ~40 ms for a tiny workspace, and 4x a `tar | tar` for a
        200 MB one (measured). An image without `cp`, or a user who may not write /workspace, gets
        `put_archive` after all."""
        session = self._sessions[ctx.state["container"]]
        code, output = session.call(f"cp -a {SEED_DIR}/. {WORKDIR}/")
        if code != 0:
            if ctx.log is not None:
                ctx.log.line(f"seeding with cp failed (exit {code}: {output.strip()[:200]}); using put_archive")
            self._seed(api, ctx)

    def _seed(self, api: Any, ctx: JobContext) -> None:
        """Copy the workspace into the volume through the engine's archive API."""
        try:
            api.put_archive(ctx.state["container"], WORKDIR, tar_stream(ctx.workspace))
        except (APIError, DockerException) as exc:
            raise ProviderError(f"cannot seed the workspace volume: {_reason(exc)}") from exc

    def _start(self, api: Any, ctx: JobContext) -> None:
        """Attach to the job container (its shell reads commands from the attach socket), start it and
        wait for the idle mark, or its death: the engine reports a failed exec of the entrypoint (exec
        format error, no /bin/sh) either as an error of `start` or as the container's output and exit."""
        cid = ctx.state["container"]
        try:
            sock = api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            session = self._sessions[cid] = _Session(sock)
            api.start(cid)
        except APIError as exc:
            self._died_at_start(api, ctx, str(_reason(exc)))
            return
        with contextlib.suppress(OSError):  # a shell that died at once: the stream tells why
            session.send(PREAMBLE)
        if not session.wait_up(self.timeout_s):
            self._died_at_start(api, ctx, session.early.decode(errors="replace").strip())

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
        session = self._sessions.get(ctx.state.get("container", ""))
        if session is not None and not _RAW_UNSAFE.intersection(command):
            return session.run(command, ctx.trace, stdout_fd, stderr_fd)
        api = self.api()
        argv = ["/bin/sh", "-x", "-c", command] if ctx.trace else ["/bin/sh", "-c", command]
        try:
            exec_id = api.exec_create(ctx.state["container"], argv, workdir=WORKDIR)["Id"]
            stream = api.exec_start(exec_id, stream=True, demux=True)
        except (APIError, DockerException) as exc:
            os.close(stdout_fd)
            os.close(stderr_fd)
            raise ProviderError(f"cannot start step {index + 1}: {_reason(exc)}") from exc
        return _ExecStep(api, exec_id, stream, stdout_fd, stderr_fd)

    def stop(self, ctx: JobContext, grace_s: float) -> None:
        try:
            api = self.api()
        except ProviderError:
            return  # no engine, nothing of ours can be running there any more
        cid = ctx.state.get("container")
        session = self._sessions.get(cid or "")
        if cid and session is not None:
            self._stop_session(api, cid, session, grace_s)
        for sid in [cid if session is None else None, *ctx.state.get("services", [])]:
            if not sid:
                continue
            with contextlib.suppress(APIError, DockerException):
                api.stop(sid, timeout=max(0, math.ceil(grace_s)))
            _kill_if_running(api, sid)

    def _stop_session(self, api: Any, cid: str, session: _Session, grace_s: float) -> None:
        """`docker stop` by hand: the container's shell acts on TERM only between commands, and waits
        for its input when idle. So: TERM to the step in flight (an exec: the shell would act only
        after it), TERM to the shell plus an empty line to wake it (its trap then ends everything
        else, with the grace), and SIGKILL when the grace is over."""
        with contextlib.suppress(APIError, DockerException):
            if session.step is not None:
                api.exec_start(api.exec_create(cid, ["/bin/sh", "-c", "kill -TERM -1"])["Id"])
            api.kill(cid, signal="SIGTERM")
        with contextlib.suppress(OSError):
            session.send("\n")
        with contextlib.suppress(Exception):  # requests' ReadTimeout when the grace runs out
            api.wait(cid, timeout=max(1, math.ceil(grace_s)))
        _kill_if_running(api, cid)

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
        session = self._sessions.pop(ctx.state.get("container", ""), None)
        if session is not None:
            session.close()
        for cid in [ctx.state.get("container"), *ctx.state.get("services", [])]:
            if cid:
                with contextlib.suppress(Exception):
                    api.remove_container(cid, force=True, v=True)  # v: the anonymous workspace volume
        if ctx.state.get("network"):
            with contextlib.suppress(Exception):
                api.remove_network(ctx.state["network"])


def _kill_if_running(api: Any, cid: str) -> None:
    """SIGKILL for a container still running once its grace is over."""
    with contextlib.suppress(APIError, DockerException):
        if api.inspect_container(cid)["State"].get("Running"):
            api.kill(cid)


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
