"""Run locks and abandoned runs. Runs in the supervisor.

Each run holds `.loom/.runtime/runs/<run_id>.lock` (a filelock, released by the OS when the
process dies). A lock file that can be taken has no live owner: its run was abandoned (the
supervisor was SIGKILLed); the next `loom` command marks it and reaps what it left.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from filelock import FileLock, Timeout


class RunLock:
    def __init__(self, runtime: Path, run_id: str) -> None:
        self.dir = runtime / "runs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{run_id}.lock"
        self.lock = FileLock(str(self.path), timeout=0)
        self.lock.acquire()
        info = self.dir / f"{run_id}.json"
        info.write_text(json.dumps({"pid": os.getpid(), "run_id": run_id}))
        self.info = info

    def release(self) -> None:
        self.lock.release()
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.info.unlink()


def find_abandoned(runtime: Path) -> list[str]:
    """Run ids whose lock file exists but is held by nobody."""
    folder = runtime / "runs"
    if not folder.is_dir():
        return []
    dead = []
    for path in sorted(folder.glob("*.lock")):
        lock = FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue  # alive
        except OSError:
            continue
        try:
            dead.append(path.name[: -len(".lock")])
        finally:
            lock.release()
    return dead


def alive_runs(runtime: Path) -> set[str]:
    folder = runtime / "runs"
    if not folder.is_dir():
        return set()
    names = {p.name[: -len(".lock")] for p in folder.glob("*.lock")}
    return names - set(find_abandoned(runtime))


def forget(runtime: Path, run_id: str) -> None:
    for suffix in (".lock", ".json"):
        with contextlib.suppress(OSError):
            (runtime / "runs" / f"{run_id}{suffix}").unlink()
