"""`loom logs` (spec §11): a failing system section is marked and its error printed with its code
once; `--follow` tails a run that is still going, live, and ends with it. Real runs, real files."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import LOOM
from tests.process.runner import Background, loom_env, make_repo, run_loom, run_processes


def test_a_failing_section_is_marked_and_its_code_printed_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    use:
      stage: s
      target: linux
      secrets:
        NOPE: {ref: "env://LOOM_TEST_UNSET_SECRET"}
      script: [touch ran]
    """)
    result = run_loom(repo, "run", "--local")
    assert result.code == 1
    run_id = result.receipt["run_id"]
    logs = run_loom(repo, "logs")
    assert logs.code == 0, logs.stderr
    assert logs.stderr.splitlines() == [
        f'run {run_id}: job "use" failed in section secrets',
        "--- section secrets failed  <- the job failed here",
    ]
    error = ("[SECRETS_REQUIRED_MISSING] secret NOPE (env://LOOM_TEST_UNSET_SECRET): $LOOM_TEST_UNSET_SECRET is "
             "not set in the environment of loom")
    assert error in logs.stdout.splitlines()
    assert logs.stdout.count("SECRETS_REQUIRED_MISSING") == 1


def test_follow_tails_a_running_run_until_it_ends(tmp_path: Path) -> None:
    go = tmp_path / "go"
    repo = make_repo(tmp_path / "repo", f"""
    version: v1
    stages: [a, b]
    default:
      target: linux
    wait:
      stage: a
      script:
        - echo first
        - "i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.05; done; echo second"
    after:
      stage: b
      script: [echo third]
    """)
    run = Background(repo, "run", "--local")
    follow: subprocess.Popen[str] | None = None
    try:
        runs = repo / ".loom" / ".runtime" / "runs"
        deadline = time.monotonic() + 30
        while not (locks := sorted(runs.glob("*.lock"))):
            assert run.proc.poll() is None and time.monotonic() < deadline, "the run never took its lock"
            time.sleep(0.02)
        run_id = locks[0].name[: -len(".lock")]
        run.wait_for_file(repo / ".loom" / ".runtime" / "logs" / run_id)
        follow = subprocess.Popen([*LOOM, "logs", "--follow"], cwd=repo, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=loom_env())
        assert follow.stdout is not None
        first = follow.stdout.readline()
        assert first == "[wait] first\n"  # printed while the job still waits for `go`
        assert not go.exists() and follow.poll() is None
    finally:
        go.touch()
    out, err = follow.communicate(timeout=60)
    result = run.finish()
    assert result.code == 0, result.stderr
    assert follow.returncode == 0, err
    assert out.splitlines() == ["[wait] second", "[after] third"]
    assert err.splitlines() == [
        f"following run {run_id} (^C to stop)",
        "[wait] --- step 1: echo first",
        "[wait] --- step 2: i=0; while [ ! -e " + str(go) + " ] && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.05; "
        "done; echo second",
        "[after] --- step 1: echo third",
        f"run {run_id}: success",
    ]
    # a finished run: everything at once, then the verdict
    again = run_loom(repo, "logs", run_id, "--follow", "--job", "wait", "--step", "2")
    assert again.stdout == "second\n"
    assert again.stderr.splitlines()[-1] == f"run {run_id}: success"


def test_follow_ends_when_the_run_is_abandoned(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    hang:
      stage: s
      target: linux
      script: ["echo waiting; sleep 3107"]
    """)
    run = Background(repo, "run", "--local")
    logs = repo / ".loom" / ".runtime" / "logs"
    deadline = time.monotonic() + 30
    while not (steps := list(logs.glob("*/jobs/hang/user/script/01/events.jsonl"))):
        assert run.proc.poll() is None and time.monotonic() < deadline, "the step never started"
        time.sleep(0.02)
    run_id = steps[0].parts[-7]
    follow = subprocess.Popen([*LOOM, "logs", "--follow"], cwd=repo, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=loom_env())
    assert follow.stdout is not None
    assert follow.stdout.readline() == "[hang] waiting\n"
    run.signal(signal.SIGKILL)  # the supervisor dies: nobody will write this run's receipt
    run.proc.wait(timeout=30)
    out, err = follow.communicate(timeout=60)
    assert out == ""  # nothing more was printed after the SIGKILL
    assert follow.returncode == 0, err
    assert err.splitlines()[-1] == f"run {run_id}: failure: abandoned"
    assert run_processes(run_id) == []  # the follower's reaping stopped the job's processes
