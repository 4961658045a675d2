"""The writer killed at any moment (issue 11, item 4): every run still ends with a receipt, the
right verdict, valid logs and nothing left running. Real writer processes, real SIGKILLs: once just
before the supervisor sends each kind of record (`LOOM_FAULT_KILL_WRITER`, which kills the real
writer and waits for its death, so the send is the one that finds it gone), and at varied delays
into real runs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.helpers import workflow
from tests.process.runner import (
    LOOM,
    Result,
    assert_logs_valid,
    load,
    loom_env,
    make_repo,
    run_loom,
    run_processes,
    writer_of,
)

WORKFLOW = """
version: v1
stages: [s]
a:
  stage: s
  target: linux
  script:
    - for i in 1 2 3; do echo "a $i"; done
b:
  stage: s
  target: linux
  needs: [a]
  script:
    - echo b; sleep 0.2
c:
  stage: s
  target: linux
  script:
    - echo c
d:
  stage: s
  target: linux
  needs: [b, c]
  script:
    - echo d
"""
JOBS = ["a", "b", "c", "d"]
DEATH = "writer process died (SIGKILL)"


def _check(result: Result) -> dict[str, object]:
    """What every run must give, whenever its writer died: a receipt that agrees with the exit code,
    one line per job, whole JSON in every log, no Python error on the terminal, no process left."""
    assert "Traceback" not in result.stderr and "Broken pipe" not in result.stderr, result.stderr
    receipt = result.receipt
    assert receipt["exit_code"] == result.code, result.stderr
    assert [j["id"] for j in receipt["jobs"]] == JOBS
    assert all(j["status"] in ("success", "canceled", "skipped") for j in receipt["jobs"]), receipt["jobs"]
    assert_logs_valid(result)
    summary = load(Path(receipt["pipeline_summary_path"]))
    assert summary["status"] == receipt["status"] and summary["exit_code"] == result.code
    assert run_processes(str(receipt["run_id"])) == []
    return receipt


@pytest.mark.parametrize("where", [
    "RunStarted:1", "WriterReady:1", "RunPhase:1", "JobRoster:1", "AttachWorker:1", "AttachWorker:3", "JobEnded:1",
    "JobEnded:3", "RunPhase:6", "RunEnded:1", "MarkAbandoned:1",
])
def test_writer_killed_before_each_kind_of_record(tmp_path: Path, where: str) -> None:
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    dead_id = f"loom-run-local-{time.time_ns()}"  # a recent run: retention (14 days) leaves it be
    if where.startswith("MarkAbandoned"):  # a dead run to mark: a lock file nobody holds
        runs = repo / ".loom/.runtime/runs"
        runs.mkdir(parents=True)
        (runs / f"{dead_id}.lock").write_text("")
    result = run_loom(repo, "run", "--local", "-j", "2", env=loom_env(LOOM_FAULT_KILL_WRITER=where))
    assert result.code == 1, result.stderr
    receipt = _check(result)
    assert receipt["error"] == DEATH
    assert f"loom run: {DEATH}" in result.stderr
    statuses = {j["id"]: j["status"] for j in receipt["jobs"]}  # type: ignore[union-attr]
    if where in ("RunEnded:1", "RunPhase:6"):  # every job had ended: the new writer keeps their documents
        assert set(statuses.values()) == {"success"}
        assert result.step_lines("a", 1) == ["a 1", "a 2", "a 3"]
    if where == "MarkAbandoned:1":
        dead = load(repo / f".loom/.runtime/receipts/{dead_id}.json")
        assert dead["status"] == "failure" and dead["error"] == "abandoned"


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0])
def test_writer_killed_at_varied_moments(tmp_path: Path, delay: float) -> None:
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    proc = subprocess.Popen([*LOOM, "run", "--local", "-j", "2"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=loom_env())
    writer = writer_of(proc.pid)
    time.sleep(delay)
    try:
        writer.send_signal(signal.SIGKILL)
    except psutil.NoSuchProcess:
        pass  # it had finished already: the run must simply pass
    out, err = proc.communicate(timeout=120)
    result = Result(proc.returncode, out, err, repo)
    assert result.code in (0, 1), err
    receipt = _check(result)
    if result.code == 0:
        assert {j["status"] for j in receipt["jobs"]} == {"success"}  # type: ignore[union-attr]
    else:
        assert receipt["error"] == DEATH, err


@pytest.mark.parametrize(("step", "code"), [
    ("while :; do echo x; done", 141),  # sh itself dies of SIGPIPE
    ("trap '' PIPE; while :; do echo x || exit 7; done 2>/dev/null", 7),  # one that gets EPIPE and exits 7
])
def test_a_step_that_fails_because_its_writer_died_is_canceled_not_failed(tmp_path: Path, step: str,
                                                                          code: int) -> None:
    """A step's output is read by the writer itself (its pipe's read end went there), so the
    writer's death breaks the pipe of a step that is printing, and the step dies of it (or exits on
    its EPIPE) before the supervisor's Cancel can reach the worker. The job was stopped by the run's
    failure, so it is canceled, not failed: the supervisor looks at its writer before at what its
    workers report. Made certain here: the supervisor is stopped (SIGSTOP) while the writer is
    killed and the worker ends the job, and only then let go, so both wait for it at once."""
    started = tmp_path / "started"
    repo = make_repo(tmp_path / "repo", workflow({"a": {"script": [f"touch {started}; {step}"]}}))
    proc = subprocess.Popen([*LOOM, "run", "--local"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=loom_env())
    loom = psutil.Process(proc.pid)
    try:
        _wait_for(proc, "the step started", started.exists)
        writer = writer_of(proc.pid)
        worker = next(c for c in loom.children() if os.getsid(c.pid) == c.pid)
        loom.suspend()
        writer.kill()  # the worker ends the job and exits, unreaped: no Cancel came
        _wait_for(proc, "the worker ended the job", lambda: worker.status() == psutil.STATUS_ZOMBIE)
    finally:
        loom.resume()
    jobs, err = _ended_by_the_death(proc, repo)
    assert jobs == [("a", "canceled", code)], err


def test_a_job_failing_of_a_death_found_in_the_middle_of_a_turn_is_canceled(tmp_path: Path) -> None:
    """The writer found dead by a send in the middle of a turn of the supervisor's loop (here the
    first JobEnded, `a`'s), not by its pidfd at the turn's start: a printing job `c` dies of the
    broken pipe while the link takes over, and its report is read later in the same turn. Seen as
    `c` "failed (exit 141)" in 1 of ~45 runs of `test_writer_killed_before_each_kind_of_record
    [JobEnded:1]`. Set up here: the supervisor is stopped while `a` ends and `c` starts printing,
    so that both are read in the turn after it is let go, `a` first."""
    marks = {name: tmp_path / name for name in ("a1", "c1", "go", "printing")}
    wait_go = f'while [ ! -e {marks["go"]} ]; do sleep 0.01; done'
    repo = make_repo(tmp_path / "repo", workflow({
        "a": {"script": [f'touch {marks["a1"]}; {wait_go}']},
        "c": {"script": [f'touch {marks["c1"]}; {wait_go}', f'touch {marks["printing"]}; while :; do echo x; done']},
    }))
    proc = subprocess.Popen([*LOOM, "run", "--local", "-j", "2"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=loom_env(LOOM_FAULT_KILL_WRITER="JobEnded:1"))
    loom = psutil.Process(proc.pid)
    try:
        _wait_for(proc, "both jobs started", lambda: marks["a1"].exists() and marks["c1"].exists())
        workers = [c for c in loom.children() if os.getsid(c.pid) == c.pid]
        loom.suspend()
        marks["go"].touch()
        _wait_for(proc, "a ended, c printing", lambda: marks["printing"].exists() and sorted(
            w.status() == psutil.STATUS_ZOMBIE for w in workers) == [False, True])
    finally:
        loom.resume()
    jobs, err = _ended_by_the_death(proc, repo)
    assert [(name, status) for name, status, _ in jobs] == [("a", "success"), ("c", "canceled")], err


def _wait_for(proc: subprocess.Popen[str], what: str, done: Callable[[], bool]) -> None:
    """Until `done()`, for 30 s at most, while `loom` runs."""
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline and proc.poll() is None, f"{what}: {proc.stderr and proc.stderr.read()}"
        time.sleep(0.01)


def _ended_by_the_death(proc: subprocess.Popen[str], repo: Path) -> tuple[list[tuple[str, str, int | None]], str]:
    """The end of a run whose writer was killed: failed for that death, with valid logs and nothing
    left running. Returns each job's (id, status, exit code), and what `loom` printed."""
    out, err = proc.communicate(timeout=60)
    result = Result(proc.returncode, out, err, repo)
    assert result.code == 1, err
    receipt = result.receipt
    assert receipt["error"] == DEATH, err
    assert "Traceback" not in err
    assert_logs_valid(result)
    assert run_processes(str(receipt["run_id"])) == []
    return [(j["id"], j["status"], j["exit_code"]) for j in receipt["jobs"]], err


def test_a_late_job_answer_does_not_take_the_place_of_the_receipt(tmp_path: Path) -> None:
    """A JobEnded delivered again to a writer that took over is answered (JobWritten) by it, while
    the loop, seeing the death, had printed the job's line unanswered: the answer is still waiting
    when the run asks for its receipt. Seen as "cannot write the receipt: unexpected JobWritten" and
    no receipt, in 1 of ~40 runs of the tests above. A real writer, answers left unread on purpose."""
    from loomrun.protocol import messages as m
    from loomrun.supervisor.writerlink import WriterLink

    repo = make_repo(tmp_path / "repo", WORKFLOW)
    now = time.time_ns()
    link = WriterLink(m.RunStarted(f"loom-run-local-{now}", f"loom-local-{now}", str(repo),
                                   str(repo / ".loom/workflow.yml"), ("loom", "run", "--local"), now))
    link.begin()
    assert link.ready() is not None, link.failed
    try:
        link.send(m.JobRoster((("a", "s"),)))
        link.send(m.JobEnded("a", "s", "failed", 3, m.STEP_FAILED, "exit code 3", "host", None, now,
                             time.time_ns(), answer=True))  # its JobWritten is never read by a loop
        reply = link.request(m.RunEnded("failure", 1, time.time_ns(), 'job "a" failed', {}), 60.0)
        assert isinstance(reply, m.RunWritten), reply
        assert load(Path(reply.receipt_path))["status"] == "failure"
    finally:
        link.close()
