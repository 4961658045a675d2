"""^C, SIGTERM, SIGKILL of `loom run`, a killed writer, a full disk, concurrent runs: real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.process.runner import (
    Background,
    Result,
    assert_logs_valid,
    load,
    loom_env,
    make_repo,
    processes_matching,
    run_loom,
    run_processes,
    writer_of,
)

LONG = """
version: v1
stages: [s]
done:
  stage: s
  target: linux
  script:
    - echo quick
long:
  stage: s
  target: linux
  needs: [done]
  script:
    - echo started; touch "$MARK"; sleep {sleep}
later:
  stage: s
  target: linux
  needs: [long]
  script:
    - echo never
"""


def _start(tmp_path: Path, sleep: int, **env: str) -> tuple[Background, Path]:
    mark = tmp_path / "started"
    repo = make_repo(tmp_path / "repo", LONG.format(sleep=sleep))
    bg = Background(repo, "run", "--local", env=loom_env(MARK=str(mark), **env))
    bg.wait_for_file(mark)
    return bg, repo


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_interrupt_cancels_cleans_up_and_writes_receipt(tmp_path: Path, sig: int, code: int, name: str) -> None:
    bg, _ = _start(tmp_path, 3101)
    bg.signal(sig)
    result = bg.finish()
    assert result.code == code, result.stderr
    receipt = result.receipt
    assert receipt["error"] == f"interrupted by {name}"
    statuses = {j["id"]: j["status"] for j in receipt["jobs"]}
    assert statuses == {"long": "canceled", "done": "success", "later": "canceled"}
    assert result.job_summary("long")["failure_kind"] == "canceled"
    assert result.step_lines("long", 1) == ["started"]
    assert (result.logs_dir / "jobs/long/system/cleanup/summary.json").exists()
    assert processes_matching("sleep 3101") == []
    assert run_processes(receipt["run_id"]) == []
    assert_logs_valid(result)
    lines = result.stderr.splitlines()
    assert lines.index(f"receipt: {result.receipt_path}") < lines.index(f"loom run: interrupted by {name}")
    assert f'job "later" canceled (interrupted by {name})' in lines  # the kind once, not "canceled (canceled: "
    assert any(re.fullmatch(rf'job "long" canceled in \d+\.\d\ds \(interrupted by {name}\)', ln) for ln in lines)


def test_second_interrupt_skips_the_grace_period(tmp_path: Path) -> None:
    mark = tmp_path / "started"
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    stubborn:
      stage: s
      target: linux
      script:
        - trap '' TERM; touch "$MARK"; sleep 3102
    """)
    bg = Background(repo, "run", "--local", env=loom_env(MARK=str(mark), LOOM_STOP_GRACE_S="600"))
    bg.wait_for_file(mark)
    bg.signal(signal.SIGINT)
    cleanup_started = False
    for _ in range(500):  # wait until the worker is inside its grace period, then ^C again
        if any("sleep 3102" in " ".join(p.cmdline()) for p in psutil.process_iter() if _ok(p)):
            cleanup_started = True
            break
    assert cleanup_started
    import time

    time.sleep(0.3)
    bg.signal(signal.SIGINT)
    result = bg.finish(timeout=60)  # a 600 s grace would blow this timeout: the second ^C cut it short
    assert result.code == 130
    cleanup = (result.logs_dir / "jobs/stubborn/system/cleanup/events.jsonl").read_text()
    assert "grace cut short" in cleanup
    assert processes_matching("sleep 3102") == []


def _ok(p: psutil.Process) -> bool:
    try:
        p.cmdline()
        return True
    except psutil.Error:
        return False


def test_sigkill_of_loom_then_next_run_marks_it_abandoned(tmp_path: Path) -> None:
    bg, repo = _start(tmp_path, 3103)
    runs = list((repo / ".loom/.runtime/runs").glob("*.lock"))
    assert len(runs) == 1
    dead_run = runs[0].name[: -len(".lock")]
    bg.signal(signal.SIGKILL)
    bg.proc.wait(timeout=30)
    second = run_loom(repo, "run", "--local", "--job", "done")
    assert second.code == 0, second.stderr
    receipt = load(repo / ".loom/.runtime/receipts" / f"{dead_run}.json")
    assert receipt["status"] == "failure" and receipt["error"] == "abandoned"
    summary = load(repo / ".loom/.runtime/logs" / dead_run / "pipeline/summary.json")
    assert summary["status"] == "failure" and summary["error"] == "abandoned"
    assert processes_matching("sleep 3103") == []
    assert run_processes(dead_run) == []
    assert not (repo / ".loom/.runtime/runs" / f"{dead_run}.lock").exists()


def test_writer_killed_mid_run_fails_the_run_with_a_receipt(tmp_path: Path) -> None:
    bg, _ = _start(tmp_path, 3104)
    writer_of(bg.proc.pid, timeout=0).send_signal(signal.SIGKILL)
    result = bg.finish()
    assert result.code == 1, result.stderr
    receipt = result.receipt
    assert receipt["error"] == "writer process died (SIGKILL)"
    assert {j["id"]: j["status"] for j in receipt["jobs"]} == {"done": "success", "long": "canceled",
                                                               "later": "canceled"}
    assert result.job_manifest("done")["steps"][0]["status"] == "success"  # kept from the first writer
    assert processes_matching("sleep 3104") == []
    assert_logs_valid(result)


def _can_mount() -> bool:
    filesystems = Path("/proc/filesystems")
    return os.geteuid() == 0 and filesystems.exists() and "tmpfs" in filesystems.read_text()


def test_full_disk_on_the_runtime_dir_ends_in_a_clear_error(tmp_path: Path) -> None:
    if not _can_mount():
        pytest.skip("mounting a small tmpfs needs root")
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    chatty:
      stage: s
      target: linux
      script:
        - seq 1 400000
    """)
    runtime = repo / ".loom/.runtime"
    runtime.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(runtime)], check=True)
    try:
        result = run_loom(repo, "run", "--local")
        assert result.code == 1
        assert "No space left on device" in result.stderr
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("loom run:")]
        assert len(errors) == 1, result.stderr
        for path in runtime.rglob("*.jsonl"):
            text = path.read_text()
            assert text == "" or text.endswith("\n")
            for raw in text.splitlines():
                json.loads(raw)
    finally:
        subprocess.run(["umount", "-l", str(runtime)], check=False)


def test_two_runs_in_the_same_repo_at_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    a:
      stage: s
      target: linux
      script: ["sleep 0.5; echo a"]
    b:
      stage: s
      target: linux
      script: ["echo b"]
    """)
    first, second = Background(repo, "run", "--local"), Background(repo, "run", "--local")
    r1, r2 = first.finish(), second.finish()
    assert r1.code == 0 and r2.code == 0, (r1.stderr, r2.stderr)
    assert r1.receipt["run_id"] != r2.receipt["run_id"]
    for r in (r1, r2):
        assert r.step_lines("a", 1) == ["a"]
        assert_logs_valid(r)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5])
def test_interrupt_at_any_moment_never_leaves_a_mess(tmp_path: Path, delay: float) -> None:
    """^C at arbitrary points (start-up, bootstrap, snapshot, jobs): always 130, no traceback, and a
    receipt whenever the run got far enough to print one; nothing of the run survives."""
    import time

    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    a:
      stage: s
      target: linux
      script: ["sleep 3105"]
    b:
      stage: s
      target: linux
      script: ["echo b"]
    """)
    for i in range(300):  # a snapshot with some substance, so start-up takes a while
        (repo / f"f{i}.txt").write_text("x" * 1000)
    bg = Background(repo, "run", "--local")
    time.sleep(delay)
    bg.signal(signal.SIGINT)
    out, err = bg.proc.communicate(timeout=60)
    if bg.proc.returncode == -signal.SIGINT or "init_import_site" in err or "Could not import runpy" in err:
        # ^C while the interpreter itself was starting (before any loom code ran): Python's own
        # behaviour, reported by a shell as 130; nothing had started, so nothing may be left.
        assert "receipt: " not in err
    else:
        assert bg.proc.returncode == 130, err
        assert "Traceback" not in err, err
        if "receipt: " in err:
            result = Result(130, out, err, repo)
            assert result.receipt["error"] == "interrupted by SIGINT"
            assert_logs_valid(result)
    runs = repo / ".loom/.runtime/runs"
    assert not runs.exists() or not list(runs.glob("*.lock"))
    assert processes_matching("sleep 3105") == []


def test_sigkill_of_loom_then_loom_logs_marks_it_abandoned(tmp_path: Path) -> None:
    bg, repo = _start(tmp_path, 3106)
    dead_run = next((repo / ".loom/.runtime/runs").glob("*.lock")).name[: -len(".lock")]
    bg.signal(signal.SIGKILL)
    bg.proc.wait(timeout=30)
    logs = run_loom(repo, "logs", dead_run)
    assert logs.code == 0, logs.stderr
    assert f"run {dead_run}: failure: abandoned" in logs.stderr
    receipt = load(repo / ".loom/.runtime/receipts" / f"{dead_run}.json")
    assert receipt["status"] == "failure" and receipt["error"] == "abandoned"
    assert processes_matching("sleep 3106") == []
    assert run_processes(dead_run) == []
