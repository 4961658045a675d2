"""--cache-diff comparison: fingerprints, diffs, verdicts and quarantine of diverging hit keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

from loomrun.cache.compare import JobOutcome, cache_diff_failed, compare_passes, diff_fingerprints, fingerprint
from loomrun.cache.quarantine import Quarantine


def test_fingerprint_hashes_content_and_exec_bit_not_mtime(tmp_path: Path) -> None:
    (tmp_path / "dist").mkdir()
    app = tmp_path / "dist" / "app"
    app.write_bytes(b"binary")
    (tmp_path / "dist" / "link").symlink_to("app")
    (tmp_path / "other.txt").write_text("not an output")
    digest = hashlib.sha256(b"binary").hexdigest()
    first = fingerprint(tmp_path, ["dist"])
    assert first == {"dist/app": f"sha256:{digest}", "dist/link": "symlink:app"}
    app.touch()
    import os
    os.utime(app, (1, 1))
    assert fingerprint(tmp_path, ["dist"]) == first
    app.chmod(0o755)
    assert fingerprint(tmp_path, ["dist"])["dist/app"] == f"sha256:{digest}+x"


def test_fingerprints_of_two_identical_trees_match(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name / "out").mkdir(parents=True)
        (tmp_path / name / "out" / "f").write_text("same")
    assert fingerprint(tmp_path / "a", ["out"]) == fingerprint(tmp_path / "b", ["out"])


def test_diff_fingerprints_reports_both_sides_and_missing_ones() -> None:
    off = {"a": "sha256:1", "b": "sha256:2", "c": "sha256:3"}
    on = {"a": "sha256:1", "b": "sha256:9", "d": "sha256:4"}
    assert diff_fingerprints(off, on) == [
        {"path": "b", "off": "sha256:2", "on": "sha256:9"},
        {"path": "c", "off": "sha256:3", "on": None},
        {"path": "d", "off": None, "on": "sha256:4"},
    ]
    assert diff_fingerprints(off, off) == []


def test_diverging_job_with_a_hit_is_quarantined(tmp_path: Path) -> None:
    q = Quarantine(tmp_path)
    off = {"deps": JobOutcome("success", 0, {"out/x": "sha256:good"}),
           "build": JobOutcome("success", 0, {"dist/app": "sha256:aa"})}
    on = {"deps": JobOutcome("success", 0, {"out/x": "sha256:good"}, ("deps-key",)),
          "build": JobOutcome("success", 0, {"dist/app": "sha256:bb"}, ("poisoned", "also-hit"))}
    passes = [{"cache": "off", "run_id": "r1", "logs_dir": "/l/r1", "status": "success"},
              {"cache": "on", "run_id": "r2", "logs_dir": "/l/r2", "status": "success"}]
    block = compare_passes(off, on, run_off="r1", run_on="r2", quarantine=q, passes=passes)
    assert block["passes"] == passes
    assert block["quarantined"] == ["poisoned", "also-hit"]
    assert block["nondeterministic"] == []
    deps, build = block["jobs"]
    assert deps == {"id": "deps", "cache_hits": ["deps-key"], "diverged": False, "differences": [],
                    "nondeterministic": False}
    assert build["diverged"] is True
    assert build["differences"] == [{"path": "dist/app", "off": "sha256:aa", "on": "sha256:bb"}]
    assert q.is_quarantined("poisoned") and q.is_quarantined("also-hit") and not q.is_quarantined("deps-key")
    record = q.get("poisoned")
    assert record is not None and record["run_off"] == "r1" and record["run_on"] == "r2"
    assert record["differences"] == build["differences"] and "build" in record["reason"]
    assert cache_diff_failed(block)


def test_diverging_job_without_a_hit_is_nondeterministic_and_quarantines_nothing(tmp_path: Path) -> None:
    q = Quarantine(tmp_path)
    off = {"stamp": JobOutcome("success", 0, {"out/ts": "sha256:1"})}
    on = {"stamp": JobOutcome("success", 0, {"out/ts": "sha256:2"})}
    block = compare_passes(off, on, run_off="r1", run_on="r2", quarantine=q)
    assert block["jobs"][0]["diverged"] and block["jobs"][0]["nondeterministic"]
    assert block["nondeterministic"] == ["stamp"] and block["quarantined"] == []
    assert q.list() == []
    assert not cache_diff_failed(block)


def test_status_and_exit_code_divergence_count_and_output_order_follows_order(tmp_path: Path) -> None:
    off = {"a": JobOutcome("success", 0), "b": JobOutcome("success", 0)}
    on = {"b": JobOutcome("failed", 2, {}, ("k",)), "a": JobOutcome("success", 0)}
    block = compare_passes(off, on, run_off="r1", run_on="r2", quarantine=None, order=["a", "b"])
    a, b = block["jobs"]
    assert a["id"] == "a" and not a["diverged"]
    assert b["status"] == {"off": "success", "on": "failed"} and b["exit_code"] == {"off": 0, "on": 2}
    assert block["quarantined"] == ["k"]


def test_deterministic_passes_quarantine_nothing(tmp_path: Path) -> None:
    q = Quarantine(tmp_path)
    same = {"build": JobOutcome("success", 0, {"dist/a": "sha256:1"}, ())}
    hit = {"build": JobOutcome("success", 0, {"dist/a": "sha256:1"}, ("k",))}
    passes = [{"cache": "off", "status": "success"}, {"cache": "on", "status": "success"}]
    block = compare_passes(same, hit, run_off="r1", run_on="r2", quarantine=q, passes=passes)
    assert block["quarantined"] == [] and q.list() == [] and not cache_diff_failed(block)
    failed = [{"cache": "off", "status": "success"}, {"cache": "on", "status": "failure"}]
    assert cache_diff_failed({**block, "passes": failed})
