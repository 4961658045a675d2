"""pytest plugin: no test may leave processes, Docker objects or temp files behind. Runs in pytest.

Loaded by tests/conftest.py (and by inner pytest runs in tests/test_infra.py with `-p tests.leakcheck`).

* Processes: after each test, new descendants of the pytest process, plus any process (anywhere on
  the machine, e.g. one that escaped into its own session) whose environment carries this session's
  `LOOM_TEST_SESSION` marker, which every child inherits (so `loom` runs, workers and steps, with their
  `LOOM_RUN_ID`, are all covered). A 2 s grace lets exiting processes finish; zombies are ignored.
* Docker: containers, volumes and networks labelled `loom.run_id` that appeared during the test and
  belong to this session (see `ours`), when an engine answers (a unix-socket ping with a short
  timeout first; the SDK is imported only then). Limit: a leftover whose run id neither embeds the
  pytest pid nor has a logs folder under our basetemp is not attributed to us, so not seen; this
  keeps a test session from removing the objects of another session sharing the engine.
* cgroups: loom's own (a fork server's `loom-forks-<pid>`, a job's `loom/<run_id>.<job>`) that appeared
  during the test, are still there after the grace and belong to this session (see
  `_cgroup_is_ours`: the cgroups of another `loom` on the machine are never touched).
* Temp files: the session gets a private TMPDIR (created in the system temp dir, removed at the end),
  so `tempfile.gettempdir()` in this process and every child points there; new entries after a test
  are leftovers. pytest's own basetemp is fixed before the switch, so it stays in the system temp dir.
  Limit: a program that writes to a hard-coded /tmp is not seen.

Leftovers are killed / removed first (so one bad test does not cascade), then the test fails naming
them. With `CI=true` a skipped test is reported as failed, with the skip reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest

from loomrun.proctree import tracking_pid

SESSION_VAR = "LOOM_TEST_SESSION"
RUN_LABEL = "loom.run_id"
GRACE_S = 2.0

ProcKey = tuple[int, float]


# ---- processes -------------------------------------------------------------------------------------

def _key(proc: psutil.Process) -> ProcKey | None:
    try:
        return proc.pid, proc.create_time()
    except psutil.Error:
        return None


def _marked_pids(marker: bytes) -> list[int]:
    """Pids whose initial environment holds SESSION_VAR=marker (read straight from /proc: fast)."""
    needle = SESSION_VAR.encode() + b"=" + marker
    found = []
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return found


def _live_processes(marker: bytes) -> dict[ProcKey, psutil.Process]:
    me = psutil.Process()
    procs: dict[ProcKey, psutil.Process] = {}
    candidates = [*me.children(recursive=True)]
    for pid in _marked_pids(marker):
        with contextlib.suppress(psutil.Error):
            candidates.append(psutil.Process(pid))
    for proc in candidates:
        key = _key(proc)
        if key is None or proc.pid == me.pid:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        procs[key] = proc
    return procs


def _describe(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        cmd = "?"
    return f"process {proc.pid} ({cmd})"


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=5)


def process_leftovers(before: set[ProcKey], marker: bytes) -> list[str]:
    deadline = time.monotonic() + GRACE_S
    while True:
        new = {k: p for k, p in _live_processes(marker).items() if k not in before}
        if not new or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    names = [_describe(p) for p in new.values()]
    _kill(list(new.values()))
    return names


# ---- docker ----------------------------------------------------------------------------------------

def _socket_path() -> str | None:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return host[len("unix://"):] if host.startswith("unix://") else None


def _ping(path: str, timeout: float = 0.5) -> bool:
    if not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return sock.recv(64).split(b" ")[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


class DockerObject(NamedTuple):
    kind: str  # container, network or volume
    ident: str
    run_id: str


def _run_id(obj: dict[str, Any]) -> str:
    return str((obj.get("Labels") or {}).get(RUN_LABEL, ""))


def ours(run_id: str, basetemp: Path) -> bool:
    """Whether a run id (of a labelled Docker object, of a job's cgroup) belongs to this session: it
    embeds our pid (the Docker test fixtures' `loomtest-<pid>-...` ids) or names a run whose logs are
    in our basetemp (a real `loom run` in a test repo). Other sessions' runs are left alone."""
    if f"-{os.getpid()}-" in run_id:
        return True
    if not run_id or "/" in run_id:
        return False
    pattern = f"**/.loom/.runtime/logs/{glob.escape(run_id)}"
    return next(iter(basetemp.glob(pattern)), None) is not None


@dataclass
class DockerWatch:
    """The engine's `loom.run_id`-labelled objects, through the low-level SDK client."""

    api: Any = None
    checked: bool = False

    def client(self) -> Any:
        if not self.checked:
            self.checked = True
            path = _socket_path()
            if path is not None and _ping(path):
                import docker  # lazily: tests that never see an engine never pay for the import

                self.api = docker.APIClient(base_url=f"unix://{path}", timeout=15)
        return self.api

    def labelled(self) -> set[DockerObject]:
        api = self.client()
        if api is None:
            return set()
        flt = {"label": [RUN_LABEL]}
        found = {DockerObject("container", c["Id"], _run_id(c)) for c in api.containers(all=True, filters=flt)}
        found |= {DockerObject("network", n["Id"], _run_id(n)) for n in api.networks(filters=flt)}
        volumes = api.volumes(filters=flt).get("Volumes") or []
        found |= {DockerObject("volume", v["Name"], _run_id(v)) for v in volumes}
        return found

    def remove(self, objects: set[DockerObject]) -> None:
        order = {"container": 0, "network": 1, "volume": 2}
        for kind, ident, _ in sorted(objects, key=lambda o: order[o.kind]):
            with contextlib.suppress(Exception):
                if kind == "container":
                    self.api.remove_container(ident, force=True, v=True)
                elif kind == "network":
                    self.api.remove_network(ident)
                else:
                    self.api.remove_volume(ident, force=True)


# ---- temp dir --------------------------------------------------------------------------------------

def _listing(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


# ---- the session and the per-test check ------------------------------------------------------------

@dataclass
class Session:
    marker: bytes
    tmpdir: Path
    basetemp: Path
    docker: DockerWatch = field(default_factory=DockerWatch)


@dataclass
class Before:
    procs: set[ProcKey]
    docker: set[DockerObject]
    temp: set[str]
    cgroups: set[str]


def _capture(session: Session) -> Before:
    return Before(procs=set(_live_processes(session.marker)), docker=_docker_listing(session),
                  temp=_listing(session.tmpdir), cgroups=_cgroups())


def _docker_listing(session: Session) -> set[DockerObject]:
    try:
        return session.docker.labelled()
    except Exception:  # an engine that dies mid-session is the Docker tests' failure, not ours
        return set()


# ---- cgroups ---------------------------------------------------------------------------------------

def _cgroups() -> set[str]:
    """loom's cgroups on this machine: fork servers' tracking cgroups (`loom-forks-<pid>`, in the pids
    hierarchy on v1) and jobs' limit cgroups (`loom/<run_id>.<job>`), a few levels deep at most."""
    found: set[str] = set()
    for top in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        if not os.path.isdir(top):
            continue
        for folder, dirs, _files in os.walk(top):
            depth = folder[len(top):].count("/")
            for name in dirs:
                if name.startswith("loom-forks-") or (os.path.basename(folder) == "loom" and "." in name):
                    found.add(os.path.join(folder, name))
            if depth >= 3:
                dirs[:] = []
            else:
                dirs[:] = [d for d in dirs if not d.startswith(("loom-forks-", "system.slice"))]
    return found


def _members(path: str) -> list[int]:
    with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.procs")) as fh:
        return [int(pid) for pid in fh.read().split()]
    return []


def _cgroup_is_ours(path: str, session: Session, ours_pids: set[int]) -> bool:
    """Whether a loom cgroup belongs to this session, so that a test never kills the jobs of another
    `loom` on the machine (a developer's build, another test session): one with members is ours when
    one of them is (a descendant of pytest or carrying our marker); an empty one when its fork server
    is dead (`loom-forks-<pid>`: a leftover whoever made it, and removing an empty cgroup harms no
    one) or its run's logs are in our basetemp (`loom/<run_id>.<job>`)."""
    members = _members(path)
    if members:
        return any(pid in ours_pids for pid in members)
    name = os.path.basename(path)
    if (forks := tracking_pid(name)) is not None:
        return not psutil.pid_exists(forks)
    run_id = name.rsplit(".", 1)[0]
    return ours(run_id, session.basetemp)


def cgroup_leftovers(before: set[str], session: Session) -> list[str]:
    """New loom cgroups of this session still there after a grace (a process that was just reaped may
    hold one for a moment): removed (after killing what is in one), and named."""
    deadline = time.monotonic() + GRACE_S
    while (new := _cgroups() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    if new:
        ours_pids = {key[0] for key in _live_processes(session.marker)} | {os.getpid()}
        new = {path for path in new if _cgroup_is_ours(path, session, ours_pids)}
    for path in sorted(new, key=len, reverse=True):  # children first
        for pid in _members(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)
    return [f"cgroup {path}" for path in sorted(new)]


def leftovers(session: Session, before: Before) -> list[str]:
    """Kill / remove whatever the test left behind; return one description per leftover."""
    found = process_leftovers(before.procs, session.marker)
    new_docker = {o for o in _docker_listing(session) - before.docker if ours(o.run_id, session.basetemp)}
    if new_docker:
        session.docker.remove(new_docker)
        found += [f"docker {o.kind} {o.ident[:12]} labelled {RUN_LABEL}={o.run_id}" for o in sorted(new_docker)]
    for name in sorted(_listing(session.tmpdir) - before.temp):
        _remove(session.tmpdir / name)
        found.append(f"temp entry {session.tmpdir / name}")
    found += cgroup_leftovers(before.cgroups, session)
    return found


_SESSION_KEY = pytest.StashKey[Session]()


@pytest.fixture(scope="session", autouse=True)
def _leakcheck_session(request: pytest.FixtureRequest,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    # Fix pytest's basetemp in the system temp dir before the switch.
    basetemp = tmp_path_factory.getbasetemp()
    private = Path(tempfile.mkdtemp(prefix="loom-tests-"))
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(private)
    tempfile.tempdir = str(private)
    session = request.config.stash[_SESSION_KEY]
    session.tmpdir = private
    session.basetemp = basetemp
    try:
        yield session
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(private, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_leftovers(_leakcheck_session: Session) -> Iterator[None]:
    before = _capture(_leakcheck_session)
    yield
    found = leftovers(_leakcheck_session, before)
    if found:
        pytest.fail("test left behind (now cleaned up): " + "; ".join(found), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    marker = uuid.uuid4().hex
    os.environ[SESSION_VAR] = marker
    config.stash[_SESSION_KEY] = Session(marker=marker.encode(), tmpdir=Path(tempfile.gettempdir()),
                                            basetemp=Path(tempfile.gettempdir()))


def pytest_report_header(config: pytest.Config) -> str:
    return f"leakcheck: session marker {SESSION_VAR}={os.environ.get(SESSION_VAR)}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and os.environ.get("CI") == "true" and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped with CI=true, which counts as a failure: {reason}"
    return report
