"""Process trees of a job: cgroups, TERM -> grace -> KILL, and naming a death.

Imported by the worker (which creates the job's cgroup and stops its steps) and by the supervisor
(which sweeps what a crashed worker left). Linux only.

A job's processes are found three ways, strongest first: its cgroup (v1 or v2, when this process may
create one: every descendant stays in it, even one that escaped into a new session and cleared its
environment; a job with limits gets one with controllers, and every worker of a run is born in the
run's `TrackingCgroup`); the worker's descendants (the worker is a child subreaper, so orphans
re-parent to it rather than to init, for as long as it lives); and the `LOOM_RUN_ID`/`LOOM_JOB_ID`
variables every step process carries in its environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil


CGROUP_ROOT = Path("/sys/fs/cgroup")
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()  # once, in the supervisor: every forked worker inherits the handle


def _load_prctl() -> Any:
    try:
        return _LIBC.prctl if _LIBC is not None else None
    except AttributeError:
        return None


# Looked up once here (dlsym, and a ctypes function object), not in every worker: that halved the
# cost of a worker's first prctl call (233 -> 100 us, measured in a forked child).
_PRCTL = _load_prctl()


def set_child_subreaper() -> bool:
    return _PRCTL is not None and int(_PRCTL(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def close_fds_except(*keep: int) -> None:
    """Close every fd from 3 up but `keep`: what a forked process inherited (other processes' pipes
    and sockets, the run lock) and must not hold, so that EOF on its own pipes means what it says."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def die_with_parent(sig: int) -> bool:
    """Have the kernel send `sig` to this process when its parent dies (PR_SET_PDEATHSIG)."""
    return _PRCTL is not None and int(_PRCTL(PR_SET_PDEATHSIG, sig, 0, 0, 0)) == 0


def describe_status(status: int) -> str:
    """`exit 2`, `SIGKILL`, `SIGSEGV` for a waitpid() status."""
    if os.WIFSIGNALED(status):
        return signal_name(os.WTERMSIG(status))
    return f"exit {os.WEXITSTATUS(status)}"


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def exit_code_of(returncode: int) -> int:
    """Popen-style returncode (negative for a signal) -> shell-style exit code (128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


@functools.cache
def _unified() -> bool:
    """cgroup v2 (asked once per process: the supervisor builds one JobCgroup per job)."""
    return (CGROUP_ROOT / "cgroup.controllers").exists()


class JobCgroup:
    """One cgroup per job (memory, pids, cpu) when the host lets this process create them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dirs: dict[str, Path] = {}
        self.v2 = _unified()

    # -- creation ------------------------------------------------------------------------------
    def create(self, memory: int | None, pids: int | None, cpus: float | None) -> bool:
        try:
            if self.v2:
                self._create_v2(memory, pids, cpus)
            else:
                self._create_v1(memory, pids, cpus)
        except OSError:
            self.remove()
            return False
        return True

    def _create_v1(self, memory: int | None, pids: int | None, cpus: float | None) -> None:
        for ctl in ("memory", "pids", "cpu"):
            base = CGROUP_ROOT / ctl
            if not base.is_dir():
                continue
            path = base / "loom" / self.name
            path.mkdir(parents=True, exist_ok=True)
            self.dirs[ctl] = path
        if memory is not None:
            _write(self.dirs["memory"] / "memory.limit_in_bytes", str(memory))
            swap = self.dirs["memory"] / "memory.memsw.limit_in_bytes"
            if swap.exists():
                _write(swap, str(memory))
        if pids is not None:
            _write(self.dirs["pids"] / "pids.max", str(pids))
        if cpus is not None and "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", "100000")
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(cpus * 100000))))

    def _create_v2(self, memory: int | None, pids: int | None, cpus: float | None) -> None:
        base = CGROUP_ROOT / "loom"
        base.mkdir(exist_ok=True)
        _write(base / "cgroup.subtree_control", "+memory +pids +cpu")
        path = base / self.name
        path.mkdir(exist_ok=True)
        self.dirs["unified"] = path
        if memory is not None:
            _write(path / "memory.max", str(memory))
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")
        if pids is not None:
            _write(path / "pids.max", str(pids))
        if cpus is not None:
            _write(path / "cpu.max", f"{max(1000, int(cpus * 100000))} 100000")

    def attach_existing(self) -> None:
        """Find this job's cgroup as left by a worker that may have died (for the final sweep)."""
        candidates = {"unified": CGROUP_ROOT / "loom" / self.name} if self.v2 else {
            ctl: CGROUP_ROOT / ctl / "loom" / self.name for ctl in ("memory", "pids", "cpu")}
        self.dirs = {ctl: path for ctl, path in candidates.items() if path.is_dir()}

    # -- use -----------------------------------------------------------------------------------
    def join_self(self) -> None:
        """Move the calling process in (used in a step child between fork and exec)."""
        for path in self.dirs.values():
            _write(path / "cgroup.procs", "0")

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.dirs.values():
            try:
                found.update(int(x) for x in (path / "cgroup.procs").read_text().split())
            except OSError:
                continue
        return found

    def processes(self) -> list[psutil.Process]:
        return handles(self.pids())

    def oom_killed(self) -> bool:
        if self.v2:
            return _event(self.dirs.get("unified"), "memory.events", "oom_kill") > 0
        mem = self.dirs.get("memory")
        if mem is None:
            return False
        return _event(mem, "memory.oom_control", "oom_kill") > 0 or _int(mem / "memory.failcnt") > 0

    def pids_exhausted(self) -> bool:
        path = self.dirs.get("unified") or self.dirs.get("pids")
        return _event(path, "pids.events", "max") > 0

    def peak_memory(self) -> int | None:
        if self.v2:
            path = self.dirs.get("unified")
            return _int(path / "memory.peak") if path is not None else None
        mem = self.dirs.get("memory")
        return _int(mem / "memory.max_usage_in_bytes") if mem is not None else None

    def remove(self) -> None:
        for path in self.dirs.values():
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        self.dirs.clear()


def tracking_name(pid: int) -> str:
    """The name of the tracking cgroup a fork server makes for itself (and the workers it forks)."""
    return f"loom-forks-{pid}"


def tracking_pid(name: str) -> int | None:
    """The fork server's pid in a name `tracking_name` made; None for any other name."""
    digits = name.removeprefix("loom-forks-")
    return int(digits) if digits != name and digits.isdecimal() else None


class TrackingCgroup:
    """A cgroup that only tracks membership (no controller is set up in it): a run's, made inside
    the cgroup its first member (the fork server) comes from, so that whatever contains `loom` (a
    service's or a container's pids or memory limit) still contains every worker and step. Every
    process forked there stays there, whatever session or environment it takes. v1: the pids
    hierarchy (a controller that costs nothing without a limit); v2: a child with no controllers."""

    def __init__(self, path: Path, home: str | None = None) -> None:
        self.path = path
        self.home = home  # where the first member came from, relative to the hierarchy

    @staticmethod
    def base() -> Path:
        return CGROUP_ROOT if _unified() else CGROUP_ROOT / "pids"

    @classmethod
    def adopt(cls, pid: int, name: str) -> TrackingCgroup | None:
        """Make `<pid's cgroup>/<name>` and move `pid` into it; None when this host does not let
        us (not root, no pids hierarchy). Measured: ~0.15 ms, but the first migration of a while
        waits for an RCU grace period (~16 ms here): the fork server pays it for itself, at its
        start, while the supervisor is still importing (`forkserver.process._serve`)."""
        home = _cgroup_of(pid, _unified())
        if home is None:
            return None
        path = cls.base() / home.lstrip("/") / name
        try:
            os.mkdir(path)
        except OSError:
            return None
        made = cls(path, home)
        try:
            _write(path / "cgroup.procs", str(pid))
        except OSError:
            made.remove()
            return None
        return made

    @classmethod
    def of(cls, pid: int) -> TrackingCgroup | None:
        """The tracking cgroup `pid` put itself into (`adopt(pid, tracking_name(pid))`), if it did."""
        where = _cgroup_of(pid, _unified())
        if where is None or where.rsplit("/", 1)[-1] != tracking_name(pid):
            return None
        return cls(cls.base() / where.lstrip("/"), where.rsplit("/", 1)[0] or "/")

    @classmethod
    def left_by(cls, pid: int) -> None:
        """Remove the tracking cgroup of `pid`, a fork server of this process that has exited and
        been reaped (it was made in this process's cgroup); nothing there is fine."""
        home = _cgroup_of(os.getpid(), _unified())
        if home is None:
            return
        folder = cls.base() / home.lstrip("/")
        cgroup = cls(folder / tracking_name(pid))
        for _ in range(50):  # a member that was just reaped may be counted for a moment more
            if not cgroup.path.is_dir() or cgroup.remove():
                break
            time.sleep(0.002)
        # Those of fork servers that died with a `loom` killed before it could remove them: empty
        # (rmdir refuses any other) and their fork server gone.
        with contextlib.suppress(OSError), os.scandir(folder) as it:
            stale = [e.name for e in it
                     if (forks := tracking_pid(e.name)) is not None and not os.path.exists(f"/proc/{forks}")]
        for name in stale:
            with contextlib.suppress(OSError):
                os.rmdir(folder / name)

    def release(self, pid: int) -> None:
        """Move `pid` back where `adopt` took it from (it outlives this cgroup)."""
        if self.home is not None:
            with contextlib.suppress(OSError):
                _write(self.base() / self.home.lstrip("/") / "cgroup.procs", str(pid))

    def pids(self) -> set[int]:
        """Its members and those of the cgroups below it (a `loom run` inside a job of ours makes
        its own run's cgroup in ours)."""
        found: set[int] = set()
        for folder, _dirs, _files in os.walk(self.path):
            with contextlib.suppress(OSError, ValueError), open(os.path.join(folder, "cgroup.procs")) as fh:
                found.update(int(x) for x in fh.read().split())
        return found

    def processes(self) -> list[psutil.Process]:
        return handles(self.pids())

    def remove(self) -> bool:
        """rmdir, the cgroups below it first; False when processes are still in one."""
        for folder, _dirs, _files in os.walk(self.path, topdown=False):
            try:
                os.rmdir(folder)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    return False
        return True


def _cgroup_of(pid: int, v2: bool) -> str | None:
    """`pid`'s cgroup in the hierarchy `TrackingCgroup` uses (v1 pids, or v2), from /proc/<pid>/cgroup."""
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (v2 and controllers == "") or (not v2 and "pids" in controllers.split(",")):
            return path
    return None


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _event(folder: Path | None, name: str, key: str) -> int:
    if folder is None:
        return 0
    try:
        for line in (folder / name).read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                return int(parts[1])
    except (OSError, ValueError):
        pass
    return 0


# ---- finding and stopping processes ----------------------------------------------------------


def child_pids(pid: int) -> list[int] | None:
    """Direct children from /proc/<pid>/task/*/children (cheap); None where the kernel lacks it."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found.extend(int(x) for x in fh.read().split())
        except FileNotFoundError:
            if tid == str(pid):
                return None  # no CONFIG_PROC_CHILDREN
        except (OSError, ValueError):
            continue
    return found


def descendant_pids(pid: int) -> list[int] | None:
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = child_pids(todo.pop())
        if kids is None:
            return None
        out.extend(kids)
        todo.extend(kids)
    return out


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant; reading /proc's children lists avoids scanning the whole process table."""
    pids = descendant_pids(pid)
    if pids is None:
        import psutil  # here, not at import: a supervisor whose jobs all went well never needs it

        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            return []
    return handles(pids)


def parent_of(pid: int) -> int | None:
    """The parent pid from /proc/<pid>/stat; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2:].split(maxsplit=2)[1])


def descends_from(pid: int, ancestors: set[int]) -> bool | None:
    """Whether one of `ancestors` is an ancestor of `pid` (None: `pid` is gone). A walk that meets
    an exited process starts again: that process's children have moved up (to a subreaper above
    it, or to init), never sideways, so a second walk sees where they went."""
    for _ in range(8):
        node, depth = pid, 0
        while node > 1 and depth < 4096:
            parent = parent_of(node)
            if parent is None:
                break
            if parent in ancestors:
                return True
            node, depth = parent, depth + 1
        else:
            return False
        if node == pid:
            return None
    return False


def job_tree(worker: int, cgroup: JobCgroup | None) -> list[psutil.Process]:
    """Every process of a job whose worker is alive (running, stopped or hung), but the worker:
    its descendants (it is a subreaper: none can leave them) and its cgroup's members."""
    pids = descendant_pids(worker)
    found = {p.pid for p in descendants(worker)} if pids is None else set(pids)
    if cgroup is not None:
        found |= cgroup.pids()
    found.discard(worker)
    return _alive(handles(found))


def stopped(pid: int) -> bool:
    """True when the process is stopped (SIGSTOP, a debugger): it cannot act on anything we say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] in (b"T", b"t")


def signal_tree(procs: Iterable[psutil.Process], sig: int, spare: int | None = None) -> int:
    """Send `sig` to each live one, their process groups first (one signal reaches every member of
    a group at once: a shell waiting on its child gets its TERM with the child's, not after the
    child's death woke it). A group of one of a job's processes holds only the job's processes: a
    process can only join a group of its own session; the group `spare` (the worker's: a step
    could join it) is left out. Returns how many processes there were."""
    procs = _alive(procs)
    groups = set()
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            groups.add(os.getpgid(p.pid))
    groups.discard(spare)
    signal_groups(groups, procs, sig)
    _signal_all(procs, sig)
    return len(procs)


def handles(pids: Iterable[int]) -> list[psutil.Process]:
    """psutil handles for the pids still alive (one that exited meanwhile is skipped)."""
    pids = list(pids)
    if not pids:
        return []
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return procs


def tagged(run_id: str, job_id: str | None = None) -> list[psutil.Process]:
    """Processes whose environment carries LOOM_RUN_ID=run_id (and LOOM_JOB_ID=job_id)."""
    import psutil

    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if env.get("LOOM_RUN_ID") == run_id and (job_id is None or env.get("LOOM_JOB_ID") == job_id):
            found.append(proc)
    return found


def _alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    procs = list(procs)
    if not procs:
        return []
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    import psutil

    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            continue


def _gone(find: Callable[[], list[psutil.Process]]) -> list[psutil.Process]:
    """After signals were sent: live processes, asking twice before answering "none". A process
    re-parented between two reads of the children lists (its parent just died of our signal) would
    otherwise slip through. (Before any signal there is no such race: a parent's exit is visible
    only once its children have been re-parented.)"""
    procs = _alive(find())
    if procs:
        return procs
    time.sleep(0.002)
    return _alive(find())


def signal_groups(pgids: Iterable[int], procs: Iterable[psutil.Process], sig: int) -> None:
    """Signal whole process groups (atomic for every member), but only groups of ours that still
    have a member we found: a group id whose members all died may be reused by a stranger."""
    live = set()
    for p in procs:
        try:
            live.add(os.getpgid(p.pid))
        except (ProcessLookupError, PermissionError):
            continue
    for pgid in set(pgids) & live:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            continue


def stop_processes(find: Callable[[], list[psutil.Process]], grace_s: float,
                   should_hurry: Callable[[], bool] | None = None, groups: Iterable[int] = ()) -> str:
    """TERM everything `find()` returns, wait up to `grace_s`, then KILL until nothing is left.

    `find` is called again each round, so processes forked during the stop are caught too.
    Returns what it did, for the logs ("nothing to stop", "TERM 3; all exited in 0.12s", ...).
    """
    groups = list(groups)
    procs = _alive(find())
    if not procs:
        return "nothing to stop"
    n = len(procs)
    signal_groups(groups, procs, signal.SIGTERM)
    _signal_all(procs, signal.SIGTERM)
    start = time.monotonic()
    deadline = start + grace_s
    hurried = False
    while time.monotonic() < deadline:
        if should_hurry is not None and should_hurry():
            hurried = True
            break
        procs = _gone(find)
        if not procs:
            return f"TERM {n}; all exited in {time.monotonic() - start:.2f}s"
        _signal_all(procs, signal.SIGTERM)  # late forks get their TERM too
        time.sleep(0.02)
    killed = 0
    for _ in range(500):
        procs = _gone(find)
        if not procs:
            break
        killed += len(procs)
        signal_groups(groups, procs, signal.SIGKILL)
        _signal_all(procs, signal.SIGKILL)
        time.sleep(0.01)
    why = "grace cut short" if hurried else f"grace {grace_s:g}s ran out"
    return f"TERM {n}; {why}; KILL {killed}"


ORPHAN_REAP_S = 0.25  # how often a subreaper waiting on a step (a worker, a node actor) calls reap_orphans


def reap_orphans(keep: int | None) -> int:
    """Reap the exited children of this process except `keep` (the step it waits for itself),
    without blocking; how many it reaped. A subreaper's orphans become its children, and one that
    exits stays a zombie until reaped: its pid still answers `kill -0`, `tail --pid` and
    `psutil.wait`, so a script waiting for a daemon it killed would wait for the end of the job.
    Reads the children lists of /proc (no scan of the process table); nothing when they are absent."""
    me = os.getpid()
    try:
        tids = os.listdir(f"/proc/{me}/task")
    except OSError:
        return 0
    reaped = 0
    for tid in tids:
        try:
            with open(f"/proc/{me}/task/{tid}/children", "rb") as fh:
                pids = [int(pid) for pid in fh.read().split()]
        except OSError:
            continue
        for pid in pids:
            if pid == keep:
                continue
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            reaped += done != 0
    return reaped


def reap_zombie_children() -> None:
    """Reap exited children of this process (it is a subreaper: orphans land here)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
