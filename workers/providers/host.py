"""The host provider: each step is `sh -c` in the workspace, in its own process group. Worker process.

Every step process joins the job's cgroup (memory/pids/cpu limits enforced by the kernel; every
descendant found, even one that escaped into a new session) when the host allows creating one;
otherwise the job's processes are the worker's descendants (the worker is a child subreaper) and
limits are enforced by polling them with psutil. psutil is imported only once there is a process
to look at: a job whose steps all exited never needs it, so the fork server does not preload it
(2 MB less for every worker's fork and exit to copy and tear down; measured -21 ms CPU on 100 x
`true`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import psutil

from loomrun.globs import EMPTY_DIRS, match_paths
from loomrun.proctree import JobCgroup, descendants, exit_code_of, handles, stop_processes
from workers import jobserver
from workers.providers.base import JobContext, ProviderError
from workers.trees import copy_into, copy_paths

F_SETPIPE_SZ = 1031


class HostStep:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._pidfd = os.pidfd_open(proc.pid)

    @property
    def sentinel(self) -> int:
        return self._pidfd

    @property
    def pid(self) -> int:
        """The step's own process: the worker's child it waits for (never reaped as an orphan)."""
        return self.proc.pid

    def poll(self) -> int | None:
        code = self.proc.poll()
        return None if code is None else exit_code_of(code)

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


class HostProvider:
    name: ClassVar[str] = "host"

    def prepare(self, ctx: JobContext) -> None:
        if not ctx.workspace.is_dir():
            raise ProviderError(f"workspace {ctx.workspace} does not exist")
        limits = ctx.job.limits
        # A cgroup costs a few ms to create and remove: only jobs with limits get one. Without it the
        # job's processes are still found: the worker is a subreaper, and steps carry LOOM_RUN_ID.
        if limits.empty:
            _say(ctx, "no limits: the job's processes are tracked as the worker's descendants")
        elif (cgroup := JobCgroup(f"{ctx.run_id}.{ctx.job.name}")).create(limits.memory_bytes, limits.pids,
                                                                            limits.cpus):
            ctx.state["cgroup"] = cgroup
            _say(ctx, f"cgroup {'v2' if cgroup.v2 else 'v1'} loom/{cgroup.name}")
        else:
            _say(ctx, "no cgroup available; limits enforced by polling the process tree")
            if limits.cpus is not None:
                n = max(1, min(os.cpu_count() or 1, int(-(-limits.cpus // 1))))
                ctx.state["affinity"] = set(sorted(os.sched_getaffinity(0))[:n])
        ctx.state["base_env"] = env = {**_caller_env(), **ctx.env}
        jobserver.host_env(env, ctx.state, *ctx.state.get("jobserver", ("", 0)))

    def start_step(self, ctx: JobContext, index: int, command: str, stdout_fd: int, stderr_fd: int) -> HostStep:
        for fd in (stdout_fd, stderr_fd):
            with contextlib.suppress(OSError):  # a bigger pipe: fewer wake-ups for chatty steps
                fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
        cgroup: JobCgroup | None = ctx.state.get("cgroup")
        affinity: set[int] | None = ctx.state.get("affinity")

        def enter() -> None:  # between fork and exec, in the step's process
            if cgroup is not None:
                cgroup.join_self()
            if affinity:
                os.sched_setaffinity(0, affinity)

        argv = ["sh", "-xc" if ctx.trace else "-c", command]
        env = ctx.state["base_env"]
        try:
            proc = subprocess.Popen(
                argv, executable=_shell(env.get("PATH", os.defpath)), cwd=ctx.workspace, env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout_fd, stderr=stderr_fd, process_group=0, close_fds=True,
                pass_fds=ctx.state.get("pass_fds", ()),
                preexec_fn=enter if (cgroup is not None or affinity) else None,
            )
        finally:
            os.close(stdout_fd)
            os.close(stderr_fd)
        ctx.state.setdefault("groups", []).append(proc.pid)  # process_group=0: the step leads its group
        return HostStep(proc)

    def job_processes(self, ctx: JobContext) -> list[psutil.Process]:
        me = os.getpid()
        cgroup: JobCgroup | None = ctx.state.get("cgroup")
        procs = {p.pid: p for p in descendants(me)}
        if cgroup is not None:
            procs.update((p.pid, p) for p in handles(cgroup.pids() - procs.keys() - {me}))
        return list(procs.values())

    def stop(self, ctx: JobContext, grace_s: float) -> None:
        hurry = ctx.state.get("hurry")
        what = stop_processes(lambda: self.job_processes(ctx), grace_s, hurry, ctx.state.get("groups", ()))
        ctx.state.setdefault("stop_log", []).append(what)

    def import_tree(self, ctx: JobContext, src: Path) -> None:
        copy_into(src, ctx.workspace)

    def export_paths(self, ctx: JobContext, patterns: Sequence[str], exclude: Sequence[str], dest: Path) -> list[str]:
        copied, skipped = copy_paths(ctx.workspace, match_paths(ctx.workspace, patterns, exclude, dirs=EMPTY_DIRS),
                                     dest)
        for rel in skipped:
            _say(ctx, f"skipped {rel}: a socket, fifo or device is not copied")
        return copied

    def memory_exceeded(self, ctx: JobContext) -> bool:
        cgroup: JobCgroup | None = ctx.state.get("cgroup")
        limit = ctx.job.limits.memory_bytes
        if cgroup is not None:
            return limit is not None and cgroup.oom_killed()
        if limit is None:
            return False
        rss = _tree_rss(self.job_processes(ctx))
        ctx.state["peak_rss"] = max(rss, ctx.state.get("peak_rss", 0))
        return rss > limit

    def pids_exceeded(self, ctx: JobContext) -> bool:
        cgroup: JobCgroup | None = ctx.state.get("cgroup")
        limit = ctx.job.limits.pids
        if limit is None:
            return False
        if cgroup is not None:
            return cgroup.pids_exhausted()
        return len(self.job_processes(ctx)) > limit

    def peak_memory(self, ctx: JobContext) -> int | None:
        cgroup: JobCgroup | None = ctx.state.get("cgroup")
        if cgroup is not None:
            return cgroup.peak_memory()
        peak = ctx.state.get("peak_rss")
        return int(peak) if peak else None

    def cleanup(self, ctx: JobContext) -> None:
        self.stop(ctx, ctx.grace_s)
        jobserver.close(ctx.state)
        cgroup: JobCgroup | None = ctx.state.pop("cgroup", None)
        if cgroup is not None:
            ctx.state["final_peak"] = cgroup.peak_memory()
            cgroup.remove()


@functools.cache
def _caller_env() -> dict[str, str]:
    """The environment `loom` was started with, decoded once: the fork server fills this in its
    warm-up, so workers inherit it instead of each decoding `os.environ` (nothing in the fork server
    or a worker changes `os.environ` before a step starts)."""
    return dict(os.environ)


def _say(ctx: JobContext, text: str) -> None:
    if ctx.log is not None:
        ctx.log.line(text)


def _tree_rss(procs: list[psutil.Process]) -> int:
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


@functools.lru_cache(maxsize=16)
def _shell(path: str) -> str:
    """The `sh` a step's process runs, found on `path` (the job's PATH) once: in the fork server's
    warm-up for the caller's PATH, so workers inherit it, instead of exec trying every folder of
    PATH before the right one on every step (nine failed execve a step on this machine's PATH).
    Plain "sh" (exec searches at each step, relative to the workspace) when PATH holds a relative
    folder, or has no `sh`: then the step fails as it always did."""
    if not all(os.path.isabs(folder) for folder in path.split(os.pathsep)):
        return "sh"
    return shutil.which("sh", path=path) or "sh"
