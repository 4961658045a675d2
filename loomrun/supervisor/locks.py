"""Run locks and abandoned runs. Runs in the supervisor.

Each run holds `.loom/.runtime/runs/<run_id>.lock`: an exclusive `flock` that the kernel releases
when the process dies. A lock file that can be taken has no live owner: its run was abandoned (the
supervisor was SIGKILLed); the next `loom` command marks it and reaps what it left.

Its sidecar `<run_id>.json` is what survives the supervisor's death: the facts of the run as they
become known (`RunLock.note`): pid, command, repo and workflow paths, start time, then the snapshot,
the job roster and the Graph IR before the first job starts, then the run's tracking cgroup. The
recovery of an abandoned run reads it to fill the receipt and to find the run's processes. A plain
file write (temp file + rename, no fsync): it only has to outlive a killed process, not the machine.

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
import re
from pathlib import Path
from typing import Any

from loomrun.durable import json_pieces
from loomrun.protocol.messages import JSONText

RUN_ID = re.compile(r"loom-run-(?:local|remote)-\d+")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class RunLock:
    def __init__(self, runtime: Path, run_id: str, **facts: object) -> None:
        self.dir = runtime / "runs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{run_id}.lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if not _try_lock(self.fd):  # run ids are unique: only a clash of clocks could get here
            os.close(self.fd)
            raise OSError(f"run lock {self.path} is held by another process")
        self.info = self.dir / f"{run_id}.json"
        self.facts: dict[str, object] = {"pid": os.getpid(), "run_id": run_id, **facts}
        self._write()

    def note(self, **facts: object) -> None:
        """Add facts to the sidecar (best effort: a run goes on without it)."""
        self.facts.update(facts)
        with contextlib.suppress(OSError):
            self._write()

    def _write(self) -> None:
        tmp = self.info.with_name(self.info.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:  # in pieces, through the file's buffer: the
            fh.writelines(json_pieces(self.facts, 2, JSONText))  # Graph IR is JSONText, written as it is
        os.replace(tmp, self.info)

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
    """Run ids whose lock file exists but is held by nobody (only well-formed run ids: a stray
    `.lock` file never makes anyone remove `tmp/` or kill anything)."""
    folder = runtime / "runs"
    return [run_id for run_id in _locked_names(folder)
            if RUN_ID.fullmatch(run_id) and (lock := folder / f"{run_id}.lock").exists() and not held(lock)]


def facts_of(runtime: Path, run_id: str) -> dict[str, Any]:
    """The sidecar of a run's lock ({} when missing or unreadable)."""
    try:
        facts = json.loads((runtime / "runs" / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) and facts.get("run_id") == run_id else {}


def alive_runs(runtime: Path) -> set[str]:
    folder = runtime / "runs"
    return {run_id for run_id in _locked_names(folder) if held(folder / f"{run_id}.lock")}


def _locked_names(folder: Path) -> list[str]:
    """The names before `.lock` of the lock files in `folder`, sorted ([] when it is missing). A
    listing, not `Path.glob`, whose pattern compiled to a regex in every `loom` that asked: ~1 ms
    of each run's start."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(name[: -len(".lock")] for name in names if name.endswith(".lock"))


def forget(runtime: Path, run_id: str) -> None:
    for suffix in (".lock", ".json", ".json.tmp"):
        with contextlib.suppress(OSError):
            (runtime / "runs" / f"{run_id}{suffix}").unlink()
