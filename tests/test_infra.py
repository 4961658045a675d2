"""The test infrastructure itself: the leftover checks and the CI=true skip rule (tests/leakcheck.py).

Each case runs a tiny inner pytest session in a subprocess (pytester) with the plugin loaded, and
checks that it fails naming what was left behind, and that the leftover is really gone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester whose subprocess sessions can import `tests.leakcheck`; CI is "false" unless a case
    sets it (monkeypatch restores the outer value either way)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("CI", "false")
    return pytester


def _run_inner(pytester: pytest.Pytester, source: str, *, ci: bool = False) -> pytest.RunResult:
    pytester.makepyfile(test_inner=source)
    os.environ["CI"] = "true" if ci else "false"  # restored by the monkeypatch in `inner`
    return pytester.runpytest_subprocess("-p", "tests.leakcheck", "-rs", "-p", "no:cacheprovider",
                                         timeout=120)


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _kill_if_alive(pid: int) -> None:
    try:
        psutil.Process(pid).kill()
    except psutil.NoSuchProcess:
        pass


def test_leftover_child_process_fails_the_test_and_is_killed(inner: pytest.Pytester) -> None:
    pidfile = inner.path / "child.pid"
    result = _run_inner(inner, f"""
        import subprocess
        def test_leaves_a_child():
            proc = subprocess.Popen(["sleep", "60"])
            open({str(pidfile)!r}, "w").write(str(proc.pid))
        def test_clean():
            subprocess.run(["true"], check=True)
    """)
    pid = int(pidfile.read_text())
    try:
        assert result.ret != 0
        result.assert_outcomes(passed=2, errors=1)
        result.stdout.fnmatch_lines([f"*test left behind*process {pid} (sleep 60)*"])
        assert _gone(pid)
    finally:
        _kill_if_alive(pid)


def test_process_escaped_into_its_own_session_is_found_by_marker(inner: pytest.Pytester) -> None:
    pidfile = inner.path / "escaped.pid"
    result = _run_inner(inner, f"""
        import subprocess
        def test_daemon():
            # setsid + background: the sleep is reparented away from pytest, only the marker finds it.
            subprocess.run(["setsid", "sh", "-c", "sleep 61 </dev/null >/dev/null 2>&1 & echo $! > {pidfile}"],
                           check=True)
    """)
    pid = int(pidfile.read_text())
    try:
        assert pid not in {p.pid for p in psutil.Process().children(recursive=True)}
        assert result.ret != 0
        result.stdout.fnmatch_lines([f"*test left behind*process {pid} (sleep 61)*"])
        assert _gone(pid)
    finally:
        _kill_if_alive(pid)


def test_leftover_temp_file_fails_the_test_and_is_removed(inner: pytest.Pytester) -> None:
    record = inner.path / "temp.path"
    result = _run_inner(inner, f"""
        import os, tempfile
        def test_leaves_a_temp_file():
            fd, path = tempfile.mkstemp(prefix="leaky-")
            os.close(fd)
            open({str(record)!r}, "w").write(path)
        def test_cleans_up(tmp_path):
            fd, path = tempfile.mkstemp()
            os.close(fd)
            os.unlink(path)
            (tmp_path / "fine.txt").write_text("tmp_path is allowed")
    """)
    leaked = Path(record.read_text())
    assert result.ret != 0
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([f"*test left behind*temp entry {leaked}*"])
    assert leaked.name.startswith("leaky-")
    assert not leaked.exists()


SKIPPING = """
    import pytest
    def test_skips():
        pytest.skip("no engine here")
    def test_passes():
        pass
"""


def test_skip_is_a_failure_under_ci(inner: pytest.Pytester) -> None:
    result = _run_inner(inner, SKIPPING, ci=True)
    assert result.ret != 0
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*skipped with CI=true, which counts as a failure*no engine here*"])


def test_skip_is_a_reported_skip_without_ci(inner: pytest.Pytester) -> None:
    result = _run_inner(inner, SKIPPING, ci=False)
    assert result.ret == 0
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*no engine here*"])


def _pids_cgroup_home() -> Path:
    """This process's cgroup in the hierarchy loom's tracking cgroups live in (v1 pids, or v2)."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            return Path("/sys/fs/cgroup/pids") / path.lstrip("/")
    path = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
    return Path("/sys/fs/cgroup") / path.lstrip("/")


CGROUP_CASE = """
    import os, subprocess, time
    from pathlib import Path
    def test_makes_a_cgroup():
        # {who}: a sleep that is {how}, in a loom tracking cgroup named after it
        out = subprocess.run({cmd!r}, shell=True, check=True, capture_output=True, text=True).stdout
        pid = int(out.split()[0])
        cgroup = Path({home!r}) / f"loom-forks-{{pid}}"
        cgroup.mkdir()
        (cgroup / "cgroup.procs").write_text(str(pid))
        open({record!r}, "w").write(f"{{pid}} {{cgroup}}")
"""


def _cgroup_case(inner: pytest.Pytester, who: str, how: str, cmd: str) -> tuple[pytest.RunResult, int, Path]:
    home = _pids_cgroup_home()
    if not os.access(home, os.W_OK):
        pytest.skip(f"cannot make cgroups under {home} (not root?)")
    record = inner.path / "cgroup.txt"
    result = _run_inner(inner, CGROUP_CASE.format(who=who, how=how, cmd=cmd, home=str(home), record=str(record)))
    pid, path = record.read_text().split()
    return result, int(pid), Path(path)


def _drop_cgroup(pid: int, path: Path) -> None:
    _kill_if_alive(pid)
    _gone(pid)
    if path.exists():
        path.rmdir()


def test_leftover_loom_cgroup_of_this_session_fails_the_test_and_is_removed(inner: pytest.Pytester) -> None:
    result, pid, path = _cgroup_case(inner, "ours", "a child of the test",
                                     "sleep 63 </dev/null >/dev/null 2>&1 & echo $!")
    try:
        assert result.ret != 0
        result.stdout.fnmatch_lines([f"*test left behind*cgroup {path}*"])
        assert _gone(pid)
        assert not path.exists()
    finally:
        _drop_cgroup(pid, path)


def test_loom_cgroup_of_another_loom_on_the_machine_is_left_alone(inner: pytest.Pytester) -> None:
    """Another `loom` running beside the tests (a developer's build, another test session) keeps its
    jobs: its cgroup's members are neither descendants of pytest nor carry the session's marker."""
    result, pid, path = _cgroup_case(inner, "not ours", "in its own session, without our environment",
                                     "env -i setsid sh -c 'sleep 64 </dev/null >/dev/null 2>&1 & echo $!'")
    try:
        assert pid not in {p.pid for p in psutil.Process().children(recursive=True)}
        result.assert_outcomes(passed=1)
        assert not _gone_within(pid, 0.5)
        assert path.exists()
    finally:
        _drop_cgroup(pid, path)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid):
            return True
        time.sleep(0.05)
    return False
