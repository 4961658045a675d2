"""A pooled node actor: runs remote jobs, one at a time, with the same provider code as a local
worker (spec §12). Runs in a Ray worker process on a cluster node; Ray makes it an actor in
`loomrun.remote.rayapi` (this module never imports `ray`).

The gateway keeps a pool of these per placement (label selector + resource request), so a run of
100 short jobs starts a few Ray worker processes, not 100 (one costs ~1 s of CPU to start; a call
to a live actor ~1 ms). Per actor: a guard process (`guard.py`), a folder
`<root>/loom-remote/<run_id>/actor-<pid>/` holding its copy of the run's snapshot (shipped once per
run through the object store, unpacked once per actor) and the job's private workspace, copied
from it for each job. The actor is a child subreaper, as a local worker is: what a step leaves
running re-parents to it, so the host provider's stop finds it.

Methods never raise: a provider error comes back as data (`("error", message, section, ...)`), so
the gateway tells a job's failure from a lost node (an exception from Ray itself).
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from loomrun import tarball
from loomrun.proctree import reap_zombie_children, set_child_subreaper
from loomrun.protocol.remote import Prepare
from workers.providers import get_provider
from workers.providers.base import JobContext, Provider, ProviderError
from workers.remote import guard
from workers.remote.stream import EXIT, STDERR, pump

T = TypeVar("T")


def node_root(root: str | None) -> Path:
    return Path(root or os.environ.get("LOOM_REMOTE_DIR") or tempfile.gettempdir()) / "loom-remote"


class SectionRecord:
    __slots__ = ("failed", "lines", "message", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[tuple[str, str]] = []
        self.failed = False
        self.message = ""

    def line(self, text: str, stream: str = "stdout") -> None:
        self.lines.append((text, stream))

    def as_tuple(self) -> tuple[str, tuple[tuple[str, str], ...], bool, str]:
        return self.name, tuple(self.lines), self.failed, self.message


class Collector:
    """`Sections` and the provider section's log for a provider on the node: everything it says is
    kept and sent back with the call's answer; the worker replays it into the job's logs."""

    def __init__(self) -> None:
        self.provider = SectionRecord("provider")
        self.sections: list[SectionRecord] = []

    def line(self, text: str, stream: str = "stdout") -> None:
        self.provider.line(text, stream)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[SectionRecord]:
        rec = SectionRecord(name)
        self.sections.append(rec)
        try:
            yield rec
        except BaseException as exc:
            rec.failed = True
            rec.message = exc.message if isinstance(exc, ProviderError) else f"{type(exc).__name__}: {exc}"
            raise

    def take(self) -> tuple[tuple[tuple[str, str], ...], tuple[Any, ...]]:
        lines, sections = tuple(self.provider.lines), tuple(s.as_tuple() for s in self.sections)
        self.provider.lines.clear()
        self.sections.clear()
        return lines, sections


def _safe(fn: Callable[..., T]) -> Callable[..., T | tuple[str, ...]]:
    @functools.wraps(fn)  # Ray reads the method's signature through __wrapped__
    def wrapper(*args: Any) -> T | tuple[str, ...]:
        try:
            return fn(*args)
        except ProviderError as exc:
            return ("error", exc.message, exc.section)
        except Exception as exc:
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
            return ("error", text, "provider")
    return wrapper


class NodeJob:
    __slots__ = ("ctx", "dir", "provider", "reported_stops", "rusage")

    def __init__(self, ctx: JobContext, provider: Provider, folder: Path) -> None:
        self.ctx = ctx
        self.provider = provider
        self.dir = folder
        self.reported_stops = 0
        self.rusage = _children_cpu()


class NodeRunner:
    def __init__(self, run_id: str, root: str | None) -> None:
        self.run_id = run_id
        self.home = node_root(root) / run_id / f"actor-{os.getpid()}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.guard_proc = guard.start(run_id, self.home)  # its start overlaps the snapshot's unpacking
        self.guard: IO[bytes] | None = None
        self.snapshot: Path | None = None
        self.job: NodeJob | None = None
        self.hurried = False
        self.lock = threading.Lock()
        self.jobs_run = 0
        self.discarding: list[threading.Thread] = []

    # -- placement and the workspace ------------------------------------------------------------
    def ping(self) -> int:
        return os.getpid()

    def has_snapshot(self) -> bool:
        return self.snapshot is not None

    @_safe
    def load_snapshot(self, data: bytes) -> tuple[str, ...]:
        folder = self.home / "snapshot"
        shutil.rmtree(folder, ignore_errors=True)
        tarball.unpack(data, folder)
        self.snapshot = folder
        return ("ok",)

    @_safe
    def prepare(self, req: Prepare) -> tuple[Any, ...]:
        if self.snapshot is None:
            return ("error", "the run's snapshot did not reach this node", "provider")
        self.jobs_run += 1
        folder = self.home / f"job-{self.jobs_run}"
        folder.mkdir()
        workspace = folder / "workspace"
        shutil.copytree(self.snapshot, workspace, symlinks=True)
        env = {k: v.replace(req.local_workspace, str(workspace)) for k, v in req.env.items()}
        collector = Collector()
        ctx = JobContext(run_id=req.run_id, pipeline_id=req.pipeline_id, job=req.job, workspace=workspace,
                         env=env, sections=collector, mount_mode=req.mount_mode, trace=req.trace,
                         grace_s=req.grace_s, labels=req.labels)
        _write_secrets(ctx, req, folder / "secrets")
        ctx.log = collector
        self.hurried = False
        ctx.state["hurry"] = lambda: self.hurried
        provider = get_provider(req.inner)
        self._guarded()
        self._tell_guard(f"job {req.job.name}")
        if req.inner == "docker":
            self._tell_guard("docker")
        self.job = NodeJob(ctx, provider, folder)
        try:
            provider.prepare(ctx)
        except ProviderError as exc:
            lines, sections = collector.take()
            return ("error", exc.message, exc.section, lines, sections)
        lines, sections = collector.take()
        return ("ok", lines, sections, str(workspace))

    # -- steps --------------------------------------------------------------------------------------
    def run_step(self, index: int, command: str) -> Iterator[bytes]:
        """Streaming generator: the step's output as tagged chunks, then its exit code."""
        job = self._job()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            handle = job.provider.start_step(job.ctx, index, command, out_w, err_w)
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            yield STDERR + f"step {index} could not start: {exc.strerror or exc}\n".encode()
            yield EXIT + b"127"
            return
        yield from pump(handle, out_r, err_r)

    def stop(self, grace_s: float) -> tuple[str, ...]:
        job = self.job
        if job is None:
            return ()
        with self.lock:
            job.provider.stop(job.ctx, grace_s)
            return self._new_stops(job)

    def hurry(self) -> None:
        self.hurried = True

    @_safe
    def limits(self) -> tuple[bool, bool, int | None]:
        job = self._job()
        return (job.provider.memory_exceeded(job.ctx), job.provider.pids_exceeded(job.ctx),
                job.provider.peak_memory(job.ctx))

    # -- files in and out ---------------------------------------------------------------------------
    @_safe
    def import_tree(self, data: bytes) -> tuple[str, ...]:
        job = self._job()
        incoming = job.dir / "in"
        try:
            tarball.unpack(data, incoming)
            job.provider.import_tree(job.ctx, incoming)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        return ("ok",)

    @_safe
    def export_paths(self, patterns: tuple[str, ...], exclude: tuple[str, ...]) -> tuple[Any, ...]:
        job = self._job()
        outgoing = job.dir / "out"
        shutil.rmtree(outgoing, ignore_errors=True)
        outgoing.mkdir()
        try:
            try:
                files = job.provider.export_paths(job.ctx, patterns, exclude, outgoing)
            except ValueError as exc:
                return ("refused", str(exc))
            return ("ok", tuple(files), tarball.pack_files(outgoing, files))
        finally:
            shutil.rmtree(outgoing, ignore_errors=True)

    # -- the end of a job ------------------------------------------------------------------------------
    def cleanup(self) -> tuple[Any, ...]:
        """Whatever happened: the provider's cleanup, the job's folder, the guard told. Returns
        (lines for the cleanup section, stop log lines, peak memory, CPU seconds of the job)."""
        job = self.job
        if job is None:
            return ((), (), None, 0.0)
        lines: list[str] = []
        try:
            job.provider.cleanup(job.ctx)
        except Exception as exc:  # cleanup must not raise; say what went wrong
            lines.append(f"cleanup on the node failed: {type(exc).__name__}: {exc}")
        stops = self._new_stops(job)
        peak = job.ctx.state.get("final_peak") or job.provider.peak_memory(job.ctx)
        reap_zombie_children()
        cpu = round(_children_cpu() - job.rusage, 3)
        self._discard(job.dir)
        self.job = None
        self._tell_guard("done")
        return (tuple(lines), stops, peak, cpu)

    def retire(self) -> None:
        """The run is over: this actor's folder goes (before Ray kills the actor, so the run's
        files on the node are gone when `loom` exits; the guard would remove them too, later)."""
        if self.job is not None:
            self.cleanup()
        for thread in self.discarding:
            thread.join()
        shutil.rmtree(self.home, ignore_errors=True)
        for folder in (self.home.parent, self.home.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break

    # -- helpers ---------------------------------------------------------------------------------------
    def _discard(self, folder: Path) -> None:
        """A finished job's folder is removed in the background: its processes are gone (the
        provider's cleanup stopped them), and removing even a small tree cost ~3 ms per folder on
        this machine's ext4 (measured), on the path from one job to the next."""
        self.discarding = [t for t in self.discarding if t.is_alive()]
        thread = threading.Thread(target=shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True},
                                  name="discard", daemon=True)
        thread.start()
        self.discarding.append(thread)

    def _job(self) -> NodeJob:
        if self.job is None:
            raise ProviderError("no job is prepared on this node actor")
        return self.job

    @staticmethod
    def _new_stops(job: NodeJob) -> tuple[str, ...]:
        log = job.ctx.state.get("stop_log", [])
        new = tuple(log[job.reported_stops:])
        job.reported_stops = len(log)
        return new

    def _guarded(self) -> None:
        """Before the first job: the guard runs on its own, then this actor becomes a subreaper
        (not before: the guard must not re-parent to it)."""
        if self.guard is None:
            self.guard_proc.wait()
            self.guard = self.guard_proc.stdin
            set_child_subreaper()

    def _tell_guard(self, line: str) -> None:
        if self.guard is None:
            return
        with contextlib.suppress(OSError):
            self.guard.write(line.encode() + b"\n")
            self.guard.flush()


def _write_secrets(ctx: JobContext, req: Prepare, folder: Path) -> None:
    """`file: true` secrets as files of this node (0600, removed with the job's folder)."""
    for name, value, content in req.secret_files:
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        if req.inner == "docker":
            ctx.secret_mounts[str(path)] = value  # the path inside the container stays as it was
        else:
            ctx.env[name] = str(path)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
