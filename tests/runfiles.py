"""What finished runs leave under `.loom/.runtime/`, made without running them: for the retention
and `loom gc` tests and `scripts/bench.py hosts`. Plain helpers, run in the calling process.

A generated run has the shape a real one leaves (receipt, logs with documents and events, a
snapshot, optionally a leftover staging folder), with its start time in its id.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

DAY_NS = 86_400 * 1_000_000_000


def run_id(ns: int) -> str:
    return f"loom-run-local-{ns}"


def fake_run(runtime: Path, ns: int, *, snapshot: bool = True, staging: bool = False, jobs: int = 2) -> str:
    rid = run_id(ns)
    logs = runtime / "logs" / rid
    for job in range(jobs):
        step = logs / "jobs" / f"job{job}" / "user" / "script" / "01"
        step.mkdir(parents=True, exist_ok=True)
        (step / "events.jsonl").write_text('{"seq":1,"type":"output","line":"hello"}\n' * 20)
        (step / "summary.json").write_text(json.dumps({"status": "success"}))
        (logs / "jobs" / f"job{job}" / "summary.json").write_text(json.dumps({"status": "success"}))
    (logs / "pipeline").mkdir(parents=True, exist_ok=True)
    (logs / "pipeline" / "summary.json").write_text(json.dumps({"run_id": rid, "status": "success"}))
    (logs / "events.jsonl").write_text('{"seq":1,"type":"phase_started"}\n' * 10)
    receipts = runtime / "receipts"
    receipts.mkdir(parents=True, exist_ok=True)
    (receipts / f"{rid}.json").write_text(json.dumps({"run_id": rid, "status": "success"}))
    if snapshot:
        snap = runtime / "workspaces" / rid / "src"
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "main.c").write_text("int main(void) { return 0; }\n" * 50)
    if staging:
        stage = runtime / "tmp" / rid / "artifacts" / "job0"
        stage.mkdir(parents=True, exist_ok=True)
        (stage / "out.bin").write_bytes(b"x" * 3000)
    return rid


def fake_check_receipt(runtime: Path, seconds: float, pid: int) -> str:
    name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(seconds))}-check-{pid}.json"
    (runtime / "receipts").mkdir(parents=True, exist_ok=True)
    (runtime / "receipts" / name).write_text(json.dumps({"kind": "loom-check"}))
    return name


@contextlib.contextmanager
def held_lock(runtime: Path, rid: str) -> Iterator[None]:
    """Hold `rid`'s run lock as a live `loom run` does (an exclusive flock on runs/<id>.lock)."""
    folder = runtime / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{rid}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def tree(root: Path) -> dict[str, int]:
    """Every path under `root` (relative) with its size: to compare a tree before and after."""
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = os.lstat(path).st_size
    return out


def disk_usage(root: Path) -> int:
    """Bytes on disk under `root`, itself included (st_blocks), as `du -s --block-size=1` counts."""
    total = os.lstat(root).st_blocks * 512
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total
