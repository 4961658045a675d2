"""The crash matrix: real workers, real signals, real limits. Each case checks the failure kind, that
the bystander job finished normally, that the logs hold what was printed, that the receipt and the
pointer documents are valid, and (psutil) that no process of the run remains."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import psutil
import pytest

from loomrun.proctree import JobCgroup
from tests.process.runner import (
    Background,
    assert_logs_valid,
    loom_env,
    make_repo,
    processes_matching,
    run_loom,
    run_processes,
    walk_ladder,
)

BYSTANDER = """
bystander:
  stage: s
  target: linux
  script:
    - for i in 1 2 3; do echo "bystander $i"; sleep 0.2; done
"""


def run_case(tmp_path: Path, job: str, *, jobs: int = 2) -> tuple[object, dict[str, object]]:
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [s]\n" + job + BYSTANDER)
    result = run_loom(repo, "run", "--local", "-j", str(jobs))
    assert result.code == 1, result.stderr
    assert result.job_summary("bystander")["status"] == "success"
    assert result.step_lines("bystander", 1) == ["bystander 1", "bystander 2", "bystander 3"]
    assert_logs_valid(result)
    assert run_processes(result.receipt["run_id"]) == []
    receipt = result.receipt
    assert receipt["status"] == "failure" and receipt["exit_code"] == 1
    manifest, _ = walk_ladder(receipt)
    assert manifest["job_id"] == "victim"
    return result, result.job_summary("victim")


def test_worker_sigkill_mid_output_keeps_every_line(tmp_path: Path) -> None:
    result, summary = run_case(tmp_path, """
victim:
  stage: s
  target: linux
  script:
    - >-
      i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo "line $i";
      if [ $i = 2000 ]; then kill -KILL $PPID; fi; done; sleep 3001
""")
    assert summary["failure_kind"] == "worker_crashed"
    assert "SIGKILL" in summary["message"]
    lines = result.step_lines("victim", 1)
    assert lines[:2000] == [f"line {i}" for i in range(1, 2001)]
    assert processes_matching("sleep 3001") == []
    manifest, events = walk_ladder(result.receipt)
    assert manifest["failing_section"] == "user"
    assert events is not None and events.name == "events.jsonl" and "victim/user/script/01" in str(events)


def test_worker_sigsegv(tmp_path: Path) -> None:
    result, summary = run_case(tmp_path, """
victim:
  stage: s
  target: linux
  script:
    - echo before the crash
    - echo step two; kill -SEGV $PPID; sleep 3002
""")
    assert summary["failure_kind"] == "worker_crashed"
    assert "SIGSEGV" in summary["message"]
    assert result.step_lines("victim", 1) == ["before the crash"]
    assert result.step_lines("victim", 2) == ["step two"]
    assert processes_matching("sleep 3002") == []
    assert 'job "victim" failed' in result.stderr and "SIGSEGV" in result.stderr


def test_step_ignoring_sigterm_past_its_timeout(tmp_path: Path) -> None:
    result, summary = run_case(tmp_path, """
victim:
  stage: s
  target: linux
  timeout: 1s
  script:
    - trap '' TERM; echo ignoring TERM; sleep 3003; echo never
""")
    assert summary["failure_kind"] == "timeout"
    assert result.step_lines("victim", 1) == ["ignoring TERM"]
    assert processes_matching("sleep 3003") == []
    cleanup = (result.logs_dir / "jobs/victim/system/cleanup/events.jsonl").read_text()
    assert "KILL" in cleanup  # TERM was ignored, so the grace ran out


def test_grandchild_escaping_into_new_session_is_reaped(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    escape:
      stage: s
      target: linux
      script:
        - setsid sh -c 'sleep 3004' > /dev/null 2>&1 < /dev/null & echo forked
    """)
    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    assert result.step_lines("escape", 1) == ["forked"]
    assert processes_matching("sleep 3004") == []
    assert run_processes(result.receipt["run_id"]) == []


def _cgroups_available() -> bool:
    probe = JobCgroup(f"probe-{os.getpid()}")
    ok = probe.create(None, 10, None)
    probe.remove()
    return ok


def test_memory_hog_over_limit(tmp_path: Path) -> None:
    result, summary = run_case(tmp_path, """
victim:
  stage: s
  target: linux
  limits: {memory: 64m}
  script:
    - echo start
    - python3 -c "import time; b=[]; [b.append(bytearray(8 << 20)) or time.sleep(0.02) for _ in range(200)]"
""")
    assert summary["failure_kind"] == "memory_limit"
    assert result.step_lines("victim", 1) == ["start"]


def test_fork_bomb_under_pids_limit(tmp_path: Path) -> None:
    if not _cgroups_available():
        pytest.skip("no cgroup can be created here (not root?): a fork bomb would not be contained")
    _, summary = run_case(tmp_path, """
victim:
  stage: s
  target: linux
  limits: {pids: 40}
  script:
    - echo bombing; b() { b | b & }; b; sleep 3005
""")
    assert summary["failure_kind"] == "pids_limit"
    assert processes_matching("sleep 3005") == []


def test_limits_reach_the_job_cgroup(tmp_path: Path) -> None:
    if not _cgroups_available():
        pytest.skip("no cgroup can be created here (not root?)")
    v1 = not Path("/sys/fs/cgroup/cgroup.controllers").exists()
    root = tmp_path / "repo"
    root.mkdir()
    # Reads a limit back from the job's own cgroup (v1 layout: /sys/fs/cgroup/<controller><path>).
    (root / "cg.sh").write_text(
        'g=$(awk -F: -v c="$1" \'{n=split($2,a,","); for(i=1;i<=n;i++) if(a[i]==c) print $3}\' /proc/self/cgroup)\n'
        'cat "/sys/fs/cgroup/$1$g/$2"\n')
    reads = ["sh cg.sh pids pids.max", "sh cg.sh memory memory.limit_in_bytes", "sh cg.sh cpu cpu.cfs_quota_us"]
    steps = "".join(f"        - {cmd}\n" for cmd in ["cat /proc/self/cgroup", *(reads if v1 else [])])
    repo = make_repo(root, f"""
    version: v1
    stages: [s]
    limited:
      stage: s
      target: linux
      limits: {{memory: 256m, cpus: "0.5", pids: 64}}
      script:
{steps}""")
    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    groups = dict(line.split(":", 2)[1:] for line in result.step_lines("limited", 1))
    name = f"{result.receipt['run_id']}.limited"
    if not v1:
        assert groups[""].endswith(f"/loom/{name}")
        return
    for controller in ("memory", "pids"):
        assert groups[controller] == f"/loom/{name}", groups
    assert any(k.split(",")[0] in ("cpu", "cpuacct") and v == f"/loom/{name}" for k, v in groups.items()), groups
    assert result.step_lines("limited", 2) == ["64"]
    assert result.step_lines("limited", 3) == [str(256 << 20)]
    assert result.step_lines("limited", 4) == ["50000"]


def test_steps_get_default_signal_dispositions(tmp_path: Path) -> None:
    """A step is a program like any other: SIGINT, SIGTERM and SIGPIPE are not ignored in it (bits 2,
    15 and 13 of SigIgn in /proc/self/status are clear), whatever the worker and the supervisor do
    with them (the worker ignores SIGPIPE itself)."""
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    sig:
      stage: s
      target: linux
      script:
        - grep SigIgn /proc/self/status
    """)
    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    [line] = result.step_lines("sig", 1)
    ignored = int(line.split()[1], 16)
    assert not ignored & (1 << (2 - 1)), line  # SIGINT
    assert not ignored & (1 << (15 - 1)), line  # SIGTERM
    assert not ignored & (1 << (13 - 1)), line  # SIGPIPE


def test_worker_crash_leaves_no_step_that_cleared_its_environment(tmp_path: Path) -> None:
    """A job without limits whose step escapes into its own session with `env -i` (no LOOM_RUN_ID
    tag), then its worker is SIGKILLed: the job's cgroup still holds the escapee, and the sweep
    finds it there."""
    try:
        _, summary = run_case(tmp_path, """
victim:
  stage: s
  target: linux
  script:
    - >-
      env -i setsid sh -c 'sleep 3016' > /dev/null 2>&1 < /dev/null &
      sleep 0.3; echo escaped; kill -KILL $PPID; sleep 3017
""")
        assert summary["failure_kind"] == "worker_crashed"
        assert processes_matching("sleep 3016") == []
        assert processes_matching("sleep 3017") == []
    finally:
        for proc in processes_matching("sleep 3016"):  # the escapee has no tag: leakcheck cannot see it
            proc.kill()


def test_stopped_worker_still_gets_its_job_stopped_on_time(tmp_path: Path) -> None:
    """The worker is SIGSTOPped mid-step and nothing ever continues it: at the timeout the supervisor
    TERMs the job's processes itself (the step's trap sees its worker still stopped then), and once
    they are gone it kills the stopped worker and reports the timeout. The grace is an hour
    (`LOOM_STOP_GRACE_S=3600`), so a supervisor that waited for the grace, or for the worker, would
    outlast `finish`'s 120 s: the run can end only through the supervisor's own enforcement. Every
    assertion is made before the test sends its only SIGCONT (cleanup, had the worker survived)."""
    mark, out = tmp_path / "worker.pid", tmp_path / "term.txt"
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    victim:
      stage: s
      target: linux
      timeout: 3s
      script:
        - >-
          trap 'grep -q "^State:.*T" /proc/$PPID/status && echo "TERM while the worker was stopped" > "$OUT";
          exit 0' TERM; sleep 3018 & echo $PPID > "$MARK.tmp"; mv "$MARK.tmp" "$MARK"; wait
    """)
    bg = Background(repo, "run", "--local", env=loom_env(MARK=str(mark), OUT=str(out), LOOM_STOP_GRACE_S="3600"))
    bg.wait_for_file(mark)
    worker = psutil.Process(int(mark.read_text()))
    worker.send_signal(signal.SIGSTOP)
    try:
        result = bg.finish(timeout=120)
        assert result.code == 1, result.stderr
        summary = result.job_summary("victim")
        assert (summary["status"], summary["failure_kind"]) == ("failed", "timeout"), summary
        assert summary["message"] == "timeout after 3s", summary  # not "worker crashed (SIGKILL)"
        assert [(j["id"], j["failure_kind"]) for j in result.receipt["jobs"]] == [("victim", "timeout")]
        assert out.read_text().strip() == "TERM while the worker was stopped"
        assert processes_matching("sleep 3018") == []
        # SIGKILLed while stopped, never continued: gone (or a zombie init has yet to reap)
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
        assert_logs_valid(result)
    finally:
        with contextlib.suppress(psutil.Error):
            worker.send_signal(signal.SIGCONT)
