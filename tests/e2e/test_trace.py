"""`pipeline/trace.json` (spec §11): Chrome trace events written by the writer for every run. One
track per worker slot, a slice per job and per step, phase slices, properly nested; a step its
worker never finished (a timeout) is closed at the job's end. Real runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.run_helpers import SCHEMA
from tests.process.runner import load, make_repo, run_loom


def slices(trace: dict[str, Any], cat: str) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == cat]


def inside(child: dict[str, Any], parent: dict[str, Any]) -> bool:
    eps = 0.002  # µs: float rounding of ns -> µs
    return (child["tid"] == parent["tid"] and child["ts"] >= parent["ts"] - eps
            and child["ts"] + child["dur"] <= parent["ts"] + parent["dur"] + eps)


def test_trace_has_a_track_per_slot_and_nested_slices(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [one, two]
        default:
          target: linux
        a:
          stage: one
          script: ["sleep 0.3", "echo a"]
        b:
          stage: one
          script: ["sleep 0.3"]
        c:
          stage: one
          script: ["true"]
        slow:
          stage: two
          timeout: 1s
          script: ["echo go", "sleep 30"]
        bad:
          stage: two
          script: ["exit 4"]
        later:
          stage: two
          needs: [bad]
          script: ["true"]
        crash:
          stage: two
          needs: []
          script: ["echo one", "kill -KILL $PPID; sleep 3003"]
    """)
    result = run_loom(repo, "run", "--local", "-j", "2")
    assert result.code == 1
    trace = load(result.logs_dir / "pipeline" / "trace.json")
    assert trace["schema_version"] == SCHEMA and trace["displayTimeUnit"] == "ms"
    for ev in trace["traceEvents"]:
        assert ev["ph"] in ("M", "X") and isinstance(ev["pid"], int) and isinstance(ev["tid"], int), ev
        if ev["ph"] == "X":
            assert ev["ts"] >= 0 and ev["dur"] >= 0 and ev["name"], ev
    jobs = {e["name"]: e for e in slices(trace, "job")}
    assert set(jobs) == {"a", "b", "c", "slow", "bad", "crash"}  # `later` was skipped: it never ran
    assert {n: (e["args"]["status"], e["cname"]) for n, e in jobs.items()} == {
        "a": ("success", "good"), "b": ("success", "good"), "c": ("success", "good"),
        "slow": ("failed", "terrible"), "bad": ("failed", "terrible"), "crash": ("failed", "terrible")}
    assert jobs["slow"]["args"]["failure_kind"] == "timeout"
    # -j 2: two slots; jobs on one slot never overlap, and a and b ran at once on both
    assert {e["tid"] for e in jobs.values()} == {1, 2}
    for x in jobs.values():
        for y in jobs.values():
            if x is not y and x["tid"] == y["tid"]:
                assert x["ts"] + x["dur"] <= y["ts"] or y["ts"] + y["dur"] <= x["ts"], (x, y)
    assert jobs["a"]["tid"] != jobs["b"]["tid"]
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert names == {0: "run", 1: "slot 1", 2: "slot 2"}
    # phases inside their job, steps inside job.execution
    phases = slices(trace, "phase")
    steps = slices(trace, "step")
    run_phases = {e["name"] for e in phases if e["tid"] == 0}
    assert {"run.bootstrap", "run.pipeline_execute", "pipeline.execute", "run.finalize"} <= run_phases
    for job in (j for j in jobs.values() if j["name"] != "crash"):
        mine = [p for p in phases if p["tid"] == job["tid"] and inside(p, job)]
        assert "job.execution" in {p["name"] for p in mine}, job
        execution = next(p for p in mine if p["name"] == "job.execution")
        own_steps = [s for s in steps if inside(s, execution)]
        assert own_steps, job
    a_steps = sorted((s for s in steps if inside(s, jobs["a"])), key=lambda s: s["ts"])
    assert [(s["name"], s["args"]["command"], s["args"]["exit_code"]) for s in a_steps] == [
        ("step 1", "sleep 0.3", 0), ("step 2", "echo a", 0)]
    slow_steps = sorted((s for s in steps if inside(s, jobs["slow"])), key=lambda s: s["ts"])
    assert [s["name"] for s in slow_steps] == ["step 1", "step 2"]
    assert slow_steps[1]["dur"] < 25e6  # stopped by the timeout, not run for 30 s
    # the worker died in step 2: the step and the phases it was in end where the job ended
    crash = jobs["crash"]
    assert crash["args"]["failure_kind"] == "worker_crashed"
    crash_steps = sorted((s for s in steps if inside(s, crash)), key=lambda s: s["ts"])
    assert [(s["name"], s["args"].get("exit_code"), s["args"].get("status")) for s in crash_steps] == [
        ("step 1", 0, None), ("step 2", None, "failed")]
    assert crash_steps[1]["ts"] + crash_steps[1]["dur"] == pytest.approx(crash["ts"] + crash["dur"], abs=0.01)
    cut = [p for p in phases if inside(p, crash) and p["name"] == "job.execution"]
    assert [p["args"]["status"] for p in cut] == ["failed"]
