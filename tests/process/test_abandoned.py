"""A run whose supervisor is SIGKILLed (spec §5.5, §7.3; issue 11 item 16, issue 12 leak 3): the
next `loom` command finds it, writes a receipt with every field that is still known, kills what it
left and removes its secret files; while such a file exists, nobody else can read it."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import psutil

from tests.process.runner import (
    Background,
    load,
    loom_env,
    make_repo,
    processes_matching,
    run_loom,
    run_processes,
)

VALUE = "abandoned-s3cret-7"

WORKFLOW = """
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
  secrets:
    KEY: {{ref: "env://APP_KEY", file: true}}
  script:
    - {trap} echo "$KEY $PPID" > "$MARK.tmp"; mv "$MARK.tmp" "$MARK"; sleep {sleep}
later:
  stage: s
  target: linux
  needs: [long]
  script:
    - echo never
"""


def _modes(path: Path, top: Path) -> list[tuple[str, str]]:
    """(path below `top`, octal mode) of `path` and each folder above it up to `top`."""
    out = []
    while True:
        out.append((str(path.relative_to(top.parent)), oct(stat.S_IMODE(path.stat().st_mode))))
        if path == top:
            return out
        path = path.parent


def _start(tmp_path: Path, sleep: int, trap: str = "") -> tuple[Background, Path, Path, Path, int]:
    """A run whose `long` job holds a secret file and sleeps; returns it with the secret's path and
    the worker's pid once the step runs, after checking the modes on the way to the file."""
    mark = tmp_path / "started"
    repo = make_repo(tmp_path / "repo", WORKFLOW.format(sleep=sleep, trap=trap))
    bg = Background(repo, "run", "--local", env=loom_env(MARK=str(mark), APP_KEY=VALUE, LOOM_STOP_GRACE_S="30"))
    bg.wait_for_file(mark)
    key, worker = mark.read_text().split()
    secret = Path(key)
    run_id = next((repo / ".loom/.runtime/runs").glob("*.lock")).name[: -len(".lock")]
    tmp_run = repo / ".loom/.runtime/tmp" / run_id
    assert secret.read_text() == VALUE
    assert secret.is_relative_to(tmp_run / "secrets")
    modes = _modes(secret, tmp_run)
    assert modes[0][1] == "0o600", modes
    assert all(mode == "0o700" for _, mode in modes[1:]), modes
    return bg, repo, secret, tmp_run, int(worker)


def _kill_loom(bg: Background) -> None:
    bg.signal(signal.SIGKILL)
    bg.proc.wait(timeout=30)  # its pipes stay open while its writer drains what is left


def _dead(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} is still alive")


def test_secret_file_of_a_killed_supervisor_is_gone_and_was_private(tmp_path: Path) -> None:
    bg, repo, secret, tmp_run, worker = _start(tmp_path, 3201)
    _kill_loom(bg)
    _dead(worker)  # it stops its job and cleans up itself
    assert not secret.exists()
    second = run_loom(repo, "run", "--local", "--job", "done")
    assert second.code == 0, second.stderr
    assert not tmp_run.exists()
    assert processes_matching("sleep 3201") == []
    bg.proc.communicate(timeout=60)


def test_recovery_removes_the_secret_file_when_the_worker_died_too(tmp_path: Path) -> None:
    """Supervisor and worker SIGKILLed while the step (which ignores TERM) sleeps: only the next
    command can remove the file and kill the step; it does, through `loom logs`. (The supervisor is
    stopped first, so that it does not see its worker die and clean up.)"""
    bg, repo, secret, tmp_run, worker = _start(tmp_path, 3202, trap="trap '' TERM;")
    run_id = tmp_run.name
    bg.signal(signal.SIGSTOP)
    os.kill(worker, signal.SIGKILL)
    _dead(worker)
    _kill_loom(bg)
    assert secret.exists()  # nobody left to remove it
    logs = run_loom(repo, "logs", run_id)
    assert logs.code == 0, logs.stderr
    assert not tmp_run.exists()
    assert processes_matching("sleep 3202") == []
    assert run_processes(run_id) == []
    bg.proc.communicate(timeout=60)  # its writer saw the step's pipes close and exited
    for path in (repo / ".loom/.runtime").rglob("*"):
        if path.is_file() and "workspaces" not in path.parts:
            assert VALUE.encode() not in path.read_bytes(), path


def test_abandoned_receipt_has_every_field_still_known(tmp_path: Path) -> None:
    bg, repo, _, tmp_run, _ = _start(tmp_path, 3203)
    run_id = tmp_run.name
    before = time.time()
    _kill_loom(bg)
    second = run_loom(repo, "run", "--local", "--job", "done")
    assert second.code == 0, second.stderr
    receipt = load(repo / ".loom/.runtime/receipts" / f"{run_id}.json")
    runtime = repo / ".loom/.runtime"
    assert receipt["status"] == "failure" and receipt["exit_code"] == 1 and receipt["error"] == "abandoned"
    assert receipt["command"] == ["loom", "run", "--local"]
    assert receipt["repo_root"] == str(repo) and receipt["workflow_path"] == str(repo / ".loom/workflow.yml")
    assert receipt["pipeline_id"] == run_id.replace("loom-run-local-", "loom-local-")
    assert receipt["started_at"] < receipt["finished_at"] and receipt["duration_ms"] > 0
    assert receipt["finished_at"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before))
    assert "found the run dead" in receipt["abandoned"]["finished_at"]
    assert receipt["snapshot_path"] == str(runtime / "workspaces" / run_id) and receipt["snapshot_head_sha"]
    assert [n["id"] for n in receipt["graph_ir"]["nodes"]] == ["done", "long", "later"]
    assert receipt["logs_dir"] == str(runtime / "logs" / run_id)
    for key in ("events_jsonl_path", "pipeline_summary_path", "pipeline_manifest_path"):
        assert Path(receipt[key]).is_file(), key
    assert {j["id"]: (j["status"], j["failure_kind"]) for j in receipt["jobs"]} == {
        "done": ("success", None), "long": ("canceled", "canceled"), "later": ("canceled", "canceled")}
    manifest = load(Path(receipt["pipeline_manifest_path"]))
    assert [(j["id"], j["stage"]) for j in manifest["jobs"]] == [("done", "s"), ("long", "s"), ("later", "s")]
    logs = Path(receipt["logs_dir"])
    for job in manifest["jobs"]:
        assert load(logs / job["summary_path"])["status"] == job["status"]
        assert load(logs / job["manifest_path"])["job_id"] == job["id"]
    long_manifest = load(logs / "jobs/long/manifest.json")
    assert [s["index"] for s in long_manifest["steps"]] == [1]
    summary = load(Path(receipt["pipeline_summary_path"]))
    assert summary["jobs"] == {"total": 3, "success": 1, "failed": 0, "skipped": 0, "canceled": 2}
    assert summary["error"] == "abandoned" and summary["finished_at"] == receipt["finished_at"]
    assert processes_matching("sleep 3203") == []
    bg.proc.communicate(timeout=60)
