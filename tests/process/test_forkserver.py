"""The fork server: workers are the supervisor's own children, a killed fork server is replaced and
the run goes on, it dies with the supervisor, and its warm-up job runs for real and leaves nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from loomrun.proctree import JobCgroup
from tests.process.runner import LOOM, Background, Result, load, loom_env, make_repo, run_loom, run_processes
from workers.main import warm_up

TWO = """
version: v1
stages: [s]
first:
  stage: s
  target: linux
  script:
    - echo "$PPID" > "$MARK.tmp"; mv "$MARK.tmp" "$MARK"; while [ ! -e "$MARK.go" ]; do sleep 0.02; done
second:
  stage: s
  target: linux
  needs: [first]
  script:
    - echo second ran
"""


def _fork_server(loom: psutil.Process) -> psutil.Process:
    """Among loom's children: same process group as loom (the writer has its own, workers their own
    session)."""
    group = os.getpgid(loom.pid)
    found = [c for c in loom.children() if os.getpgid(c.pid) == group and os.getsid(c.pid) != c.pid]
    assert len(found) == 1, found
    return found[0]


def _start_first_job(tmp_path: Path) -> tuple[Background, Path, Path]:
    """`loom run` in the background, returned once job `first` runs (touch `<mark>.go` to end it);
    the mark holds the pid of first's worker."""
    mark = tmp_path / "first-running"
    repo = make_repo(tmp_path / "repo", TWO)
    bg = Background(repo, "run", "--local", env=loom_env(MARK=str(mark)))
    bg.wait_for_file(mark)
    return bg, repo, mark


def _wait_dead(proc: psutil.Process, timeout: float = 10) -> None:
    """Dead, or a zombie its parent (loom) has not reaped yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"{proc} still alive"
        time.sleep(0.02)


def test_workers_are_the_supervisors_children_and_the_fork_server_ignores_sigint(tmp_path: Path) -> None:
    bg, _repo, mark = _start_first_job(tmp_path)
    loom = psutil.Process(bg.proc.pid)
    worker = psutil.Process(int(mark.read_text()))
    assert worker.ppid() == loom.pid  # forked by the fork server with CLONE_PARENT
    server = _fork_server(loom)
    assert server.pid != worker.pid
    server.send_signal(signal.SIGINT)  # a terminal ^C reaches the whole group: loom decides, not it
    time.sleep(0.2)
    assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE
    mark.with_name(mark.name + ".go").touch()
    res = bg.finish()
    assert res.code == 0, res.stderr
    assert not server.is_running()  # ended and reaped by loom at the end of the run


def test_a_fork_server_killed_between_jobs_is_replaced(tmp_path: Path) -> None:
    bg, _repo, mark = _start_first_job(tmp_path)
    loom = psutil.Process(bg.proc.pid)
    old = _fork_server(loom)
    old.kill()
    _wait_dead(old)
    mark.with_name(mark.name + ".go").touch()
    res = bg.finish()
    assert res.code == 0, res.stderr
    assert load(res.logs_dir / "jobs" / "second" / "summary.json")["status"] == "success"
    assert res.step_lines("second", 1) == ["second ran"]


def test_the_fork_server_dies_with_the_supervisor(tmp_path: Path) -> None:
    bg, repo, _mark = _start_first_job(tmp_path)
    dead_run = next((repo / ".loom/.runtime/runs").glob("*.lock")).name[: -len(".lock")]
    server = _fork_server(psutil.Process(bg.proc.pid))
    bg.signal(signal.SIGKILL)
    bg.proc.wait(timeout=30)
    _wait_dead(server)  # PR_SET_PDEATHSIG: gone with the supervisor, not left for the next command
    logs = run_loom(repo, "logs", dead_run)  # reaps what the dead run left (the worker and its step)
    assert logs.code == 0, logs.stderr
    assert run_processes(dead_run) == []


def test_the_warm_up_job_runs_a_real_step_and_leaves_nothing_behind() -> None:
    # The fork server runs it once before forking workers; here in the test process, so that the
    # leak check sees its temp folder and its `sh` if either were left.
    result = warm_up()
    assert result is not None
    assert (result.job_id, result.status, result.exit_code, result.failure_kind) == ("warm-up", "success", 0, None)


CHAIN = """
version: v1
stages: [s]
first:
  stage: s
  target: linux
  script:
    - touch "$MARK"; while [ ! -e "$MARK.go" ]; do sleep 0.02 || :; done; true
second:
  stage: s
  target: linux
  needs: [first]
  script:
    - echo second ran
third:
  stage: s
  target: linux
  needs: [second]
  script:
    - echo third ran
"""


def _run_with_forks_refused(tmp_path: Path, workflow: str, *args: str, config: str | None = None) -> Result:
    """`loom run --local` in a cgroup whose pids.max drops to 3 (supervisor, fork server, writer)
    while its job `first` runs: from then on every clone of the fork server fails with EAGAIN. A run
    that does not end within 60 s fails the test; nothing of it may be left."""
    cgroup = JobCgroup(f"test-nofork-{os.getpid()}")
    if not cgroup.create(None, None, None):
        pytest.skip("no cgroup can be created here (not root?)")
    proc = None
    try:
        pids_dir = cgroup.dirs.get("unified") or cgroup.dirs["pids"]
        join = "; ".join(f"echo $$ > {path / 'cgroup.procs'}" for path in cgroup.dirs.values())
        mark = tmp_path / "first-running"
        repo = make_repo(tmp_path / "repo", workflow, git=False)
        if config is not None:
            (repo / ".loom" / "config.yml").write_text(config)
        proc = subprocess.Popen(["sh", "-c", f'{join}; exec "$@"', "sh", *LOOM, "run", "--local", *args], cwd=repo,
                                env=loom_env(MARK=str(mark)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not mark.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        (pids_dir / "pids.max").write_text("3")
        mark.with_name(mark.name + ".go").touch()
        out, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        result = Result(proc.returncode, out, err, repo)
        assert run_processes(result.receipt["run_id"]) == []
        return result
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        for path in cgroup.dirs.values():
            with contextlib.suppress(OSError):
                (path / "pids.max").write_text("max")
        cgroup.remove()


def test_a_worker_that_cannot_be_forked_fails_its_job_and_skips_its_dependents(tmp_path: Path) -> None:
    """`second` cannot be forked (EAGAIN): it fails as worker_crashed with the reason, `third` is
    skipped because of it, and the run ends with a receipt."""
    result = _run_with_forks_refused(tmp_path, CHAIN)
    assert result.code == 1
    assert result.receipt["status"] == "failure"
    assert result.job_summary("first")["status"] == "success"
    second = result.job_summary("second")
    assert (second["status"], second["failure_kind"]) == ("failed", "worker_crashed")
    assert second["message"].startswith("worker could not start: [Errno 11]"), second["message"]
    third = result.job_summary("third")
    assert (third["status"], third["failure_kind"], third["message"]) == (
        "skipped", "dependency_failed", 'needs "second", which failed')


FAN = CHAIN.replace("  needs: [first]\n", "  needs: [first]\n  allow_failure: true\n").replace(
    "  needs: [second]\n", "  needs: [second]\n  allow_failure: true\n") + "".join(f"""
fan{i}:
  stage: s
  target: linux
  needs: [first]
  script:
    - echo fan{i} ran
""" for i in range(6))


@pytest.mark.parametrize("jobserver", ["on", "off"])
def test_jobs_that_cannot_be_forked_all_fail_and_the_run_still_ends(tmp_path: Path, jobserver: str) -> None:
    """Seven jobs become ready at once and none can be forked, and `third` (after `second`, which
    may fail) becomes ready only when `second` failed to start, while no job is running. Each start
    that fails must lead the loop to try the next ready job at once, with the jobserver's slots
    (handed out a few at a time) or without. It used to wait for a wake-up that, with `-q` (no
    terminal redraws), nothing sends: the run hung."""
    result = _run_with_forks_refused(tmp_path, FAN, "-q", config=f'runtime:\n  jobserver: "{jobserver}"\n')
    assert result.code == 1, result.stderr
    names = ["second", "third", *(f"fan{i}" for i in range(6))]
    for name in names:
        summary = result.job_summary(name)
        assert (summary["status"], summary["failure_kind"]) == ("failed", "worker_crashed"), (name, summary)
