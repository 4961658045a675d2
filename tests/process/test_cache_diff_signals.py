"""`--cache-diff` interrupted (issue 11, item 3): a signal to `loom` stops both passes, compares
nothing and quarantines nothing, and the exit code is the signal's; `loom` SIGKILLed leaves no pass
running its jobs. Real passes, real signals, a cache key that pass 2 hits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.process.runner import LOOM, Result, load, loom_env, make_repo, processes_matching, run_loom

WORKFLOW = """
version: v1
stages: [s]
build:
  stage: s
  target: linux
  cache:
    key: deps-v1
    paths: [deps]
  artifacts:
    paths: [out]
  script:
    - mkdir -p deps out; echo real > deps/lib.txt; cp deps/lib.txt out/lib.txt
    - >-
      {trap} if [ -n "$MARKS" ]; then touch "$MARKS/$$"; sleep {sleep}; fi
"""


def _repo(tmp_path: Path, trap: str = "", sleep: int = 8) -> Path:
    repo = make_repo(tmp_path / "repo", WORKFLOW.format(trap=trap, sleep=sleep))
    first = run_loom(repo, "run", "--local")  # fills the cache: pass 2 will hit deps-v1
    assert first.code == 0, first.stderr
    return repo


def _start(repo: Path, marks: Path) -> subprocess.Popen[str]:
    """`loom run --cache-diff` leading its own process group (as a shell's job would), returned
    once both passes' jobs are in their long step."""
    marks.mkdir()
    proc = subprocess.Popen([*LOOM, "run", "--local", "--cache-diff"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=loom_env(MARKS=str(marks)), process_group=0)
    deadline = time.monotonic() + 60
    while len(list(marks.iterdir())) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    return proc


def _no_quarantine(repo: Path) -> None:
    path = repo / ".loom/.runtime/cache/quarantine.json"
    assert not path.exists() or "deps-v1" not in path.read_text()


@pytest.mark.parametrize(("sig", "code", "group"), [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)])
def test_interrupted_cache_diff_stops_both_passes_and_quarantines_nothing(
        tmp_path: Path, sig: int, code: int, group: bool) -> None:
    """SIGTERM to `loom`, or a terminal's ^C to its process group; the step ignores TERM, so each
    pass's grace runs out (one signal each, relayed once: never 'grace cut short')."""
    repo = _repo(tmp_path, trap="trap '' TERM;")
    proc = _start(repo, tmp_path / "marks")
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    result = Result(proc.returncode, out, err, repo)
    assert result.code == code, err
    assert "Traceback" not in err
    name = signal.Signals(sig).name
    receipt = result.receipt
    assert receipt["error"] == f"interrupted by {name}"
    block = receipt["cache_diff"]
    assert block["quarantined"] == [] and block["jobs"] == [] and block["interrupted"] == f"interrupted by {name}"
    assert "cache-diff: interrupted; nothing compared, nothing quarantined" in err
    _no_quarantine(repo)
    off = load(Path(block["passes"][0]["receipt"]))
    assert off["error"] == f"interrupted by {name}" and off["exit_code"] == code
    for r in (receipt, off):
        assert [(j["id"], j["status"]) for j in r["jobs"]] == [("build", "canceled")]
        cleanup = (Path(r["logs_dir"]) / "jobs/build/system/cleanup/events.jsonl").read_text()
        assert "grace 1s ran out" in cleanup and "grace cut short" not in cleanup
    assert processes_matching("sleep 8") == []


def test_sigkill_of_loom_stops_the_other_pass(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    proc = _start(repo, tmp_path / "marks")
    runs = repo / ".loom/.runtime/runs"
    sidecars = [json.loads(p.read_text()) for p in runs.glob("*.json")]
    [pass_one] = [s for s in sidecars if s["pid"] != proc.pid]
    proc.kill()
    proc.communicate(timeout=60)
    psutil.wait_procs([psutil.Process(pass_one["pid"])], timeout=60)
    assert not psutil.pid_exists(pass_one["pid"]) or psutil.Process(pass_one["pid"]).status() == "zombie"
    off = load(repo / ".loom/.runtime/receipts" / f"{pass_one['run_id']}.json")
    assert off["error"] == "interrupted by SIGTERM"
    assert [(j["id"], j["status"]) for j in off["jobs"]] == [("build", "canceled")]
    after = run_loom(repo, "logs")  # reaps the killed pass 2 (abandoned)
    assert after.code == 0, after.stderr
    assert processes_matching("sleep 8") == []
    _no_quarantine(repo)
