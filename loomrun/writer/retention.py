"""Retention (spec §13): which finished runs lose their logs, receipt and snapshot, and removing
them. Writer code: the writer applies it at the start of every run (`Retention`: the writer removes
a few entries itself, a child process of the writer more, while the run goes on), and `loom gc`
plans in the `loom` process (to list what goes, with sizes) and removes in a one-shot writer
(`oneshot.run_in_writer`), so only writer processes remove under `logs/` and `receipts/`.

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

import json
import os
import re
import select
import signal
import stat
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

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

# A plan whose paths hold at most this many entries in all is removed by the writer itself, at once
# (~0.12 ms an entry on this machine's ext4: 8 ms at most); a bigger one by a child process. Forking
# the writer (~18 MB) for an old run's 4-entry snapshot, what most runs plan, cost the run ~20 ms of
# CPU and 1,300 page faults on a 100-job run, for 0.5 ms of removal.
INLINE_ENTRIES = 64


def within(paths: Iterable[str], limit: int) -> bool:
    """True when `paths` and everything under them come to at most `limit` entries (links are not
    followed). Stops counting past `limit`: a big tree costs no more to ask about than a small one."""
    stack = list(paths)
    count = len(stack)
    while stack and count <= limit:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    count += 1
                    if count > limit:
                        break
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:  # a file (a receipt), or gone: nothing under it
            continue
    return count <= limit


def remove(runtime: Path, doomed: Iterable[Doomed]) -> tuple[list[Doomed], list[tuple[str, str]]]:
    """Remove every planned path of runs that are still not alive. Returns (the items passed over
    because their run is alive now, (path, why) for each path that could not go); a path another
    process removed first is no failure."""
    passed: list[Doomed] = []
    failures: list[tuple[str, str]] = []
    for item in doomed:
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


class Retention:
    """The writer's retention at the start of a run. The plan is made here, in the writer (a
    listing of four folders). A small plan (`INLINE_ENTRIES`) is removed here at once; a bigger
    one by a child process of the writer, oldest first, while the run goes on, which reports each
    item on a pipe the writer's loop reads (`read`). `finish` (the run is over, before its
    receipt) gives the child `FINISH_GRACE_S` more, then kills it wherever it is: the next run
    plans what is left again (a run's receipt goes first, so a run half removed is no longer
    listed), and `loom gc` removes everything.

    A process, not a thread beside the writer's loop, and killed rather than waited for. Removing
    one old 100-job run (~1,500 files) takes ~300 ms on this machine's ext4, longer than a small
    run lasts; a thread, whose every unlink gives the GIL back and forth with the loop, could be
    neither stopped in the middle of a tree nor left behind, so a run's end waited for the item in
    hand. In a store of fifty 100-job runs (`scripts/bench.py retention`, 24 rounds against that
    thread): a 1-job run 0.339 -> 0.199 s, a 100-job run the same (0.752 -> 0.755 s, which now
    does the share of the work the short runs left). What could not be removed is kept
    (`failures`, the first `_MAX_LISTED`; `failed` counts them all) for the
    run's events, receipt and terminal."""

    # Enough for what a run usually leaves (one old run, removed while this one ran) to be done;
    # never long enough to be felt: a backlog (a big old run behind a small new one) waits.
    FINISH_GRACE_S = 0.05

    def __init__(self, runtime: Path, keep_runs: int, max_age_s: float) -> None:
        self.failures: list[tuple[str, str]] = []  # (path, why), the first _MAX_LISTED
        self.failed = 0  # every path that could not go
        self.removed = 0  # items whose every path went
        self.doomed = plan(runtime, keep_runs, max_age_s)
        self.fd: int | None = None  # the child's reports; None once it is done (EOF)
        self.pid: int | None = None
        self._partial = b""
        if not self.doomed:
            return
        if within(sorted({p for item in self.doomed for p in item.paths}), INLINE_ENTRIES):
            self._remove_here(runtime)
        else:
            self._start(runtime)

    def _remove_here(self, runtime: Path) -> None:
        """A small plan (the usual one: an old run's snapshot) is removed here and now: forking the
        writer for it would cost more than the removal itself."""
        for item in self.doomed:
            self._count(*_remove_item(runtime, item))

    def _start(self, runtime: Path) -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError:  # nothing removed this time: the next run plans it again
            os.close(read_fd)
            os.close(write_fd)
            return
        if pid == 0:
            _remove_in_child(runtime, self.doomed, write_fd)
        os.close(write_fd)
        self.pid, self.fd = pid, read_fd

    def read(self) -> bool:
        """Take what the child reported since the last call (its pipe is readable). False at EOF:
        the child is done (or dead); `close` the pipe then."""
        assert self.fd is not None
        data = os.read(self.fd, 65536)
        if not data:
            return False
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            removed, failed, listed = json.loads(line)
            self._count(removed, failed, [(path, why) for path, why in listed])
        return True

    def _count(self, removed: int, failed: int, failures: Sequence[tuple[str, str]]) -> None:
        self.removed += removed
        self.failed += failed
        self.failures += failures[:max(0, _MAX_LISTED - len(self.failures))]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def finish(self) -> None:
        """Wait up to `FINISH_GRACE_S` for the child to be done, then kill it; read what it reported."""
        if self.pid is None:
            return
        deadline = time.monotonic() + self.FINISH_GRACE_S
        killed = False
        while self.fd is not None:
            left = deadline - time.monotonic()
            if left <= 0 and not killed:
                os.kill(self.pid, signal.SIGKILL)  # wherever it is: a tree half removed is planned again
                killed = True
            ready, _, _ = select.select([self.fd], [], [], None if killed else left)
            if ready and not self.read():
                self.close()
        os.waitpid(self.pid, 0)
        self.pid = None

    def report(self) -> tuple[dict[str, Any], str]:
        """After `finish`: the receipt's `retention` block ({planned, removed, failed: [{path,
        error}]}, the failures listed up to a hundred) and a one-line warning ('' when none failed)."""
        block = {"planned": len(self.doomed), "removed": self.removed,
                 "failed": [{"path": path, "error": why} for path, why in self.failures]}
        warning = ""
        if self.failures:
            path, why = self.failures[0]
            more = f" (and {self.failed - 1} more)" if self.failed > 1 else ""
            warning = f"retention could not remove {path}: {why}{more}"
        return block, warning


def _remove_item(runtime: Path, item: Doomed) -> tuple[int, int, list[tuple[str, str]]]:
    """Remove one planned item (in the writer or in its child): (1 when all of it went, else 0;
    paths that could not go; (path, why) for each of them)."""
    passed, failures = remove(runtime, (item,))
    return int(not passed and not failures), len(failures), failures


def _remove_in_child(runtime: Path, doomed: list[Doomed], out: int) -> NoReturn:
    """The retention child: remove `doomed` item by item, one line on `out` for each: [removed
    (0 or 1), paths that failed, the failures listed while fewer than _MAX_LISTED were]. It dies
    with the writer, and holds no fd of the writer's but `out`."""
    from loomrun.proctree import close_fds_except, die_with_parent

    code = 0
    try:
        parent = os.getppid()
        die_with_parent(signal.SIGKILL)
        if os.getppid() != parent:  # the writer died before that took effect
            os._exit(0)
        close_fds_except(out)
        listed = 0
        for item in doomed:
            removed, failed, failures = _remove_item(runtime, item)
            shown = failures[:max(0, _MAX_LISTED - listed)]
            listed += len(shown)
            line = json.dumps([removed, failed, shown])
            os.write(out, line.encode() + b"\n")  # blocking: whole, unless killed in the middle
    except BaseException:
        code = 1
    finally:
        os._exit(code)


_MAX_LISTED = 100  # failures a receipt lists (the warning counts them all)
