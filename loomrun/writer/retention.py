"""Retention (spec §13): which finished runs lose their logs, receipt and snapshot, and removing
them. Writer code: the writer applies it at the start of every run (`RetentionThread`, beside its
loop), and `loom gc` plans in the `loom` process (to list what goes, with sizes) and removes in a
one-shot writer (`oneshot.run_in_writer`), so only writer processes remove under `logs/` and
`receipts/`.

A run is known by its id (`loom-run-<kind>-<ns>`, `<ns>` its start) wherever it left something:
`logs/<id>/`, `receipts/<id>.json`, `workspaces/<id>/` (its snapshot), `tmp/<id>/` (staging that
`finalize` removes; only a dead run leaves it). Counting newest first, a run past the `runs`
newest, or started more than `maxAge` ago, loses everything; the `KEEP_SNAPSHOTS` newest keep
their snapshot, the others lose it (their logs stay). Check receipts (`<UTC>-check-<pid>.json`)
follow the same two rules among themselves. A run whose lock is held is never touched, whatever
its age: the plan leaves out every run alive when it is made, and each removal asks the lock
again. Names loom did not make are never touched.

A plan is a list of `Doomed` items, each naming the paths it removes in order: the receipt first
(`loom logs` finds runs by their receipt, so a run being removed stops being listed at once), then
the logs, the snapshot, the staging.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

KEEP_SNAPSHOTS = 5  # the newest runs keep their snapshot (the current run counts as one)
_RUN_ID = re.compile(r"loom-run-[a-z]+-([0-9]{1,20})")
_CHECK = re.compile(r"([0-9]{8}T[0-9]{6}Z)-check-[0-9]+\.json")


class Doomed(NamedTuple):
    kind: str  # "run" | "snapshot" | "staging" | "check receipt"
    name: str  # the run id, or the check receipt's file name
    paths: tuple[str, ...]  # absolute, in removal order; every one existed when planned


class _Run:
    __slots__ = ("logs", "ns", "receipt", "snapshot", "staging")

    def __init__(self, ns: int) -> None:
        self.ns = ns
        self.logs = self.receipt = self.snapshot = self.staging = ""


def plan(runtime: Path, keep_runs: int, max_age_s: float, now_ns: int | None = None,
         alive: Iterable[str] | None = None) -> list[Doomed]:
    """What retention removes now, oldest first. `alive`: run ids whose lock is held (asked of the
    lock files when None)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    oldest_ns = now_ns - int(max_age_s * 1e9)
    runs, checks = _inventory(str(runtime))
    doomed: list[tuple[int, Doomed]] = []
    order = sorted(runs, key=lambda r: runs[r].ns, reverse=True)
    for rank, run_id in enumerate(order):
        item = _doom_run(run_id, runs[run_id], rank >= keep_runs or runs[run_id].ns < oldest_ns, rank)
        if item is not None:
            doomed.append((runs[run_id].ns, item))
    if doomed:  # the lock files are asked only when something could go
        live = _alive(runtime) if alive is None else set(alive)
        doomed = [d for d in doomed if d[1].name not in live]
    for rank, (name, ns) in enumerate(sorted(checks.items(), key=lambda c: c[1], reverse=True)):
        if rank >= keep_runs or ns < oldest_ns:
            doomed.append((ns, Doomed("check receipt", name, (os.path.join(runtime, "receipts", name),))))
    doomed.sort(key=lambda d: (d[0], d[1].name))  # oldest first: a removal cut short leaves the newest
    return [item for _, item in doomed]


def _doom_run(run_id: str, run: _Run, due: bool, rank: int) -> Doomed | None:
    if due:
        paths = tuple(p for p in (run.receipt, run.logs, run.snapshot, run.staging) if p)
        return Doomed("run", run_id, paths)
    if run.snapshot and rank >= KEEP_SNAPSHOTS:
        return Doomed("snapshot", run_id, tuple(p for p in (run.snapshot, run.staging) if p))
    if run.staging:
        return Doomed("staging", run_id, (run.staging,))
    return None


def _inventory(runtime: str) -> tuple[dict[str, _Run], dict[str, int]]:
    """Every run id with what it left, and every check receipt with its time: one listing per
    folder, no stat (a run's age is in its id)."""
    runs: dict[str, _Run] = {}
    checks: dict[str, int] = {}
    for folder, attr in (("logs", "logs"), ("workspaces", "snapshot"), ("tmp", "staging")):
        path = os.path.join(runtime, folder)
        for name in _names(path):
            match = _RUN_ID.fullmatch(name)
            if match:
                run = runs.get(name) or runs.setdefault(name, _Run(int(match.group(1))))
                setattr(run, attr, os.path.join(path, name))
    receipts = os.path.join(runtime, "receipts")
    for name in _names(receipts):
        if name.endswith(".json") and (match := _RUN_ID.fullmatch(name[:-5])):
            run = runs.get(name[:-5]) or runs.setdefault(name[:-5], _Run(int(match.group(1))))
            run.receipt = os.path.join(receipts, name)
        elif match := _CHECK.fullmatch(name):
            checks[name] = _utc_ns(match.group(1))
    return runs, checks


def _names(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:  # absent (nothing ran yet) or unreadable: nothing of it is due
        return []


def _utc_ns(stamp: str) -> int:
    import calendar

    return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ")) * 1_000_000_000


def _alive(runtime: Path) -> set[str]:
    from loomrun.supervisor.locks import alive_runs

    return alive_runs(runtime)


def _held(runtime: str, run_id: str) -> bool:
    from loomrun.supervisor.locks import held

    return held(Path(runtime, "runs", f"{run_id}.lock"))


# ---- sizes --------------------------------------------------------------------------------------

def disk_usage(path: str, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes on disk under `path` (links never followed; a file with several names counted once)."""
    seen = set() if seen is None else seen
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    total = _blocks(st, seen)
    if not stat.S_ISDIR(st.st_mode):
        return total
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        est = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += _blocks(est, seen)
                    if stat.S_ISDIR(est.st_mode):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


def _blocks(st: os.stat_result, seen: set[tuple[int, int]]) -> int:
    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return 0
        seen.add(key)
    return st.st_blocks * 512


# ---- removal ------------------------------------------------------------------------------------

def remove(runtime: Path, doomed: Iterable[Doomed],
           stop: Callable[[], bool] = lambda: False) -> tuple[list[Doomed], list[tuple[str, str]]]:
    """Remove every planned path of runs that are still not alive (until `stop()`, asked between
    items). Returns (the items passed over because their run is alive now, (path, why) for each
    path that could not go); a path another process removed first is no failure."""
    passed: list[Doomed] = []
    failures: list[tuple[str, str]] = []
    for item in doomed:
        if stop():
            break
        if item.kind != "check receipt" and _held(str(runtime), item.name):
            passed.append(item)
            continue
        for path in item.paths:
            why = remove_path(path)
            if why:
                failures.append((path, why))
    return passed, failures


def remove_path(path: str) -> str:
    """Remove a file or a tree (read-only folders a job left included); '' or why it could not."""
    from loomrun.errors import LoomError
    from loomrun.workspace import remove_snapshot

    try:
        remove_snapshot(Path(path))
    except FileNotFoundError:
        return ""
    except LoomError as exc:  # "cannot remove workspace PATH: <strerror>": the path is the caller's to say
        if os.path.lexists(path):
            return exc.message.rsplit(": ", 1)[-1]
    except OSError as exc:
        if os.path.lexists(path):
            return str(exc.strerror or exc)
    return ""


class RetentionThread:
    """The writer's retention at the start of a run: planned and removed in a thread, so the
    writer's loop keeps serving records while an old run's files go. `finish` (when the run is
    over, before its receipt) gives it a grace to end, then stops it after the item in hand: a
    store with a big backlog (the first run with retention on a host of thousands) is worked off
    over several runs, or by `loom gc`, instead of holding up a run's exit. What could not be
    removed is kept (`failures`) for the run's events, receipt and terminal."""

    FINISH_GRACE_S = 5.0

    def __init__(self, runtime: Path, keep_runs: int, max_age_s: float) -> None:
        self.failures: list[tuple[str, str]] = []  # (path, why), appended as the removal goes
        self.removed = 0  # items whose every path went
        self.doomed = plan(runtime, keep_runs, max_age_s)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        if self.doomed:
            self.thread = threading.Thread(target=self._run, args=(runtime,), name="retention", daemon=True)
            self.thread.start()

    def _run(self, runtime: Path) -> None:
        for item in self.doomed:  # one at a time: a failure is known (and kept) as soon as it happens
            if self.stop.is_set():
                break
            passed, failures = remove(runtime, (item,))
            self.failures += failures
            self.removed += not passed and not failures

    def finish(self, grace_s: float = FINISH_GRACE_S) -> None:
        if self.thread is not None:
            self.thread.join(grace_s)
            self.stop.set()
            self.thread.join()

    def report(self) -> tuple[dict[str, Any], str]:
        """After `finish`: the receipt's `retention` block ({planned, removed, failed: [{path,
        error}]}, the failures listed up to a hundred) and a one-line warning ('' when none failed)."""
        block = {"planned": len(self.doomed), "removed": self.removed,
                 "failed": [{"path": path, "error": why} for path, why in self.failures[:_MAX_LISTED]]}
        warning = ""
        if self.failures:
            path, why = self.failures[0]
            more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            warning = f"retention could not remove {path}: {why}{more}"
        return block, warning


_MAX_LISTED = 100  # failures a receipt lists (the warning counts them all)
