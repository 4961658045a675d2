"""Run locks and abandoned runs. Runs in the supervisor.

Each run holds `.loom/.runtime/runs/<run_id>.lock`: an exclusive `flock` that the kernel releases
when the process dies. A lock file that can be taken has no live owner: its run was abandoned (the
supervisor was SIGKILLed); the next `loom` command marks it and reaps what it left.

Why plain `fcntl.flock` and not the `filelock` package here: this is a liveness marker held for the
whole life of the supervisor, which forks one worker per job. `filelock` registers fork handlers
that cost ~0.5 ms in the parent and ~0.5 ms in the child on every fork once it is imported (measured
with `scripts/bench.py run`), about a tenth of a job's overhead. The cache store, where locks guard
writes between processes, uses `filelock`; both are the same kernel `flock`, so they interoperate.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class RunLock:
    def __init__(self, runtime: Path, run_id: str) -> None:
        self.dir = runtime / "runs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{run_id}.lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if not _try_lock(self.fd):  # run ids are unique: only a clash of clocks could get here
            os.close(self.fd)
            raise OSError(f"run lock {self.path} is held by another process")
        info = self.dir / f"{run_id}.json"
        info.write_text(json.dumps({"pid": os.getpid(), "run_id": run_id}))
        self.info = info

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.info.unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def held(path: Path) -> bool:
    """True when a live process holds the run lock at `path`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if _try_lock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


def find_abandoned(runtime: Path) -> list[str]:
    """Run ids whose lock file exists but is held by nobody."""
    folder = runtime / "runs"
    if not folder.is_dir():
        return []
    return [p.name[: -len(".lock")] for p in sorted(folder.glob("*.lock")) if p.exists() and not held(p)]


def alive_runs(runtime: Path) -> set[str]:
    folder = runtime / "runs"
    if not folder.is_dir():
        return set()
    return {p.name[: -len(".lock")] for p in folder.glob("*.lock") if held(p)}


def forget(runtime: Path, run_id: str) -> None:
    for suffix in (".lock", ".json"):
        with contextlib.suppress(OSError):
            (runtime / "runs" / f"{run_id}{suffix}").unlink()
