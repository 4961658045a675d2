"""Retention (spec §13): `loom gc [--dry-run]` on a store of 200 generated runs, and every `loom run`
applying it at its start. Real `loom` processes; the runs' files are generated (tests/runfiles.py);
a live run is one whose lock a process holds, as a running `loom run` does."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Repo, RunLoom
from tests.runfiles import DAY_NS, disk_usage, fake_check_receipt, fake_run, held_lock, tree

HOUR_NS = DAY_NS // 24


def _exists(runtime: Path, folder: str, name: str) -> bool:
    return (runtime / folder / name).exists()


def test_gc_dry_run_lists_exactly_what_gc_removes_and_a_live_run_survives(repo: Repo, run_loom: RunLoom) -> None:
    runtime = repo.runtime
    now = time.time_ns()
    # 200 runs, one every 3.4 hours back to 28 days; default retention: 50 runs, 14 days.
    ids = [fake_run(runtime, now - i * DAY_NS * 28 // 200, staging=i % 10 == 3) for i in range(200)]
    checks = [fake_check_receipt(runtime, time.time() - i * 43_200, 1000 + i) for i in range(60)]
    live = ids[150]  # past the newest 50 and 21 days old: due twice over, but its lock is held
    with held_lock(runtime, live):
        before, usage = tree(runtime), disk_usage(runtime)
        dry = run_loom(["gc", "--dry-run"], repo.root)
        assert dry.returncode == 0, dry.stderr
        assert tree(runtime) == before  # a dry run changes nothing
        real = run_loom(["gc"], repo.root)
        assert real.returncode == 0, real.stderr
    planned = [line.replace("would remove ", "removed ", 1) for line in dry.stdout.splitlines()]
    assert planned == real.stdout.splitlines()
    for i, rid in enumerate(ids):
        kept = i < 50 or rid == live
        assert _exists(runtime, "logs", rid) == kept, (i, rid)
        assert _exists(runtime, "receipts", f"{rid}.json") == kept, (i, rid)
        assert _exists(runtime, "workspaces", rid) == (i < 5 or rid == live), (i, rid)
        assert not _exists(runtime, "tmp", rid) or rid == live  # a finished run's staging always goes
    for i, name in enumerate(checks):  # one every 12 h: the newest 28 are within 14 days
        assert _exists(runtime, "receipts", name) == (i < 28), (i, name)
    lines = real.stdout.splitlines()
    assert sum(line.startswith("removed run ") for line in lines) == 149
    assert sum(line.startswith("removed snapshot of ") for line in lines) == 45
    assert sum(line.startswith("removed staging of ") for line in lines) == 1
    assert sum(line.startswith("removed check receipt ") for line in lines) == 32
    assert not any(live in line for line in lines)
    assert lines[0].startswith(f"removed check receipt {checks[59]}: ")  # oldest first (29.5 days)
    assert next(x for x in lines if " run " in x).startswith(f"removed run {ids[199]} (receipt, logs, snapshot): ")
    assert f"removed run {ids[193]} (receipt, logs, snapshot, staging): " in real.stdout
    freed = re.search(r"freed .* \((\d+) bytes\): 149 runs, 45 snapshots, 1 staging folder, 32 check receipts",
                      real.stderr)
    assert freed is not None, real.stderr
    assert int(freed.group(1)) == usage - disk_usage(runtime)  # the bytes it says it freed, exactly
    finished = run_loom(["gc"], repo.root)  # its lock is free now: it is an old finished run like any other
    assert finished.stdout.startswith(f"removed run {live} (receipt, logs, snapshot): "), finished.stdout
    again = run_loom(["gc"], repo.root)
    assert (again.returncode, again.stdout, again.stderr.strip()) == (0, "", "nothing to remove")


def test_every_run_applies_retention_at_its_start_but_never_to_a_live_run(
        repo: Repo, run_loom: RunLoom, workflow: Callable[..., str]) -> None:
    repo.write_workflow(workflow({"a": {"script": ["true"]}}))
    repo.write({".loom/config.yml": "runtime:\n  retention: {runs: 10, maxAge: 1d}\n"})
    repo.commit()
    runtime = repo.runtime
    now = time.time_ns()
    ids = [fake_run(runtime, now - i * 2 * HOUR_NS) for i in range(1, 21)]  # every 2 h, back to 40 h
    live = ids[-1]
    with held_lock(runtime, live):
        res = run_loom(["run", "--local", "-q"], repo.root)
    assert res.returncode == 0, res.stderr
    new = re.search(r"receipts/(loom-run-local-\d+)\.json", res.stderr)
    assert new is not None, res.stderr
    kept_logs = {p.name for p in (runtime / "logs").iterdir()}
    assert kept_logs == {new.group(1), *ids[:9], live}  # the run itself is one of the 10
    kept_snapshots = {p.name for p in (runtime / "workspaces").iterdir()}
    assert kept_snapshots == {new.group(1), *ids[:4], live}  # the newest five, and the live one
    assert {p.name for p in (runtime / "receipts").iterdir()} == {f"{r}.json" for r in kept_logs}


def test_max_age_alone_removes_old_runs_and_nothing_is_due_when_within_bounds(
        repo: Repo, run_loom: RunLoom) -> None:
    runtime = repo.runtime
    now = time.time_ns()
    young = [fake_run(runtime, now - i * HOUR_NS, snapshot=False) for i in range(3)]
    old = fake_run(runtime, now - 3 * DAY_NS, snapshot=False)
    repo.write({".loom/config.yml": "runtime:\n  retention: {maxAge: 2d}\n"})
    res = run_loom(["gc"], repo.root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"removed run {old} (receipt, logs): " + res.stdout.split(": ")[-1].strip()]
    assert {p.name for p in (runtime / "logs").iterdir()} == set(young)
    assert run_loom(["gc", "--dry-run"], repo.root).stderr.strip() == "nothing to remove"


def test_gc_outside_a_repo_and_a_bad_config_are_one_line_errors(tmp_path: Path, repo: Repo, run_loom: RunLoom) -> None:
    outside = run_loom(["gc"], tmp_path)
    assert outside.returncode == 1 and len(outside.stderr.strip().splitlines()) == 1, outside.stderr
    assert outside.stderr.startswith("loom gc: ")
    repo.write({".loom/config.yml": "runtime:\n  retention: {runs: 0}\n"})
    bad = run_loom(["gc", "--dry-run"], repo.root)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "runtime.retention.runs" in bad.stderr


def test_a_run_half_removed_is_planned_again_and_its_removal_completes(tmp_path: Path) -> None:
    """What a retention child killed at the end of a run leaves behind (the receipt gone first, then
    part of the logs): the next plan has that run again, oldest first, and removing it finishes."""
    from loomrun.writer import retention

    runtime = tmp_path / "runtime"
    now = time.time_ns()
    ids = [fake_run(runtime, now - i * HOUR_NS) for i in range(4)]
    half = ids[3]
    (runtime / "receipts" / f"{half}.json").unlink()
    shutil.rmtree(runtime / "logs" / half / "jobs" / "job0")
    doomed = retention.plan(runtime, 2, 86400.0)
    assert [d.name for d in doomed] == [half, ids[2]]
    assert doomed[0].paths == (str(runtime / "logs" / half), str(runtime / "workspaces" / half))
    assert retention.remove(runtime, doomed) == ([], [])
    assert {p.name for p in (runtime / "logs").iterdir()} == set(ids[:2])
    assert {p.name for p in (runtime / "workspaces").iterdir()} == set(ids[:2])
    assert retention.plan(runtime, 2, 86400.0) == []


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    """`path` cannot be removed, not even by root (`chattr +i`), until the block ends."""
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root")  # CI runs as root: counted as a failure there
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    assert made.returncode == 0, f"chattr +i: {made.stderr}"
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_what_retention_cannot_remove_during_a_run_is_a_warning_an_event_and_in_the_receipt(
        repo: Repo, run_loom: RunLoom, workflow: Callable[..., str]) -> None:
    repo.write_workflow(workflow({"a": {"script": ["true"]}}))
    repo.write({".loom/config.yml": "runtime:\n  retention: {runs: 2}\n"})
    repo.commit()
    runtime = repo.runtime
    now = time.time_ns()
    ids = [fake_run(runtime, now - i * HOUR_NS) for i in range(1, 5)]  # the newest stays; 3 are due
    stuck = ids[2]
    with _immutable(runtime / "logs" / stuck / "events.jsonl"):
        res = run_loom(["run", "--local"], repo.root)
        left = {p.name for p in (runtime / "logs").iterdir()}
    assert res.returncode == 0, res.stderr  # a cleanup that failed does not fail the run
    new = re.search(r"receipts/(loom-run-local-\d+)\.json", res.stderr)
    assert new is not None, res.stderr
    assert left == {new.group(1), ids[0], stuck}  # the others went, the oldest after the failure too
    assert not _exists(runtime, "receipts", f"{stuck}.json") and not _exists(runtime, "workspaces", stuck)
    warning = f"warning: retention could not remove {runtime / 'logs' / stuck}: Operation not permitted"
    lines = res.stderr.splitlines()
    assert warning in lines, res.stderr
    assert f"  {warning.removeprefix('warning: ')}" in lines[lines.index("1 warning:"):]  # under the summary
    receipt = json.loads((runtime / "receipts" / f"{new.group(1)}.json").read_text())
    assert receipt["retention"] == {"planned": 3, "removed": 2, "failed": [
        {"path": str(runtime / "logs" / stuck), "error": "Operation not permitted"}]}
    events = [json.loads(line) for line in Path(receipt["events_jsonl_path"]).read_text().splitlines()]
    failed = [e for e in events if e.get("code") == "LOOM_RETENTION_FAILED"]
    assert [(e["type"], e["scope"], e["message"]) for e in failed] == [
        ("error", "run", warning.removeprefix("warning: "))]


def test_within_counts_entries_up_to_its_limit_and_never_follows_a_link(tmp_path: Path) -> None:
    from loomrun.writer.retention import within

    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    for i in range(5):
        (top / "a" / "b" / f"f{i}").write_text("x")
    big = tmp_path / "big"
    big.mkdir()
    for i in range(100):
        (big / f"f{i}").write_text("x")
    (top / "link").symlink_to(big, target_is_directory=True)  # one entry, whatever is behind it
    receipt = tmp_path / "r.json"
    receipt.write_text("{}")
    # top, a, b, five files, the link: 9 entries; the receipt: 1; a path that is gone still counts 1
    paths = [str(top), str(receipt), str(tmp_path / "gone")]
    assert within(paths, 11) and not within(paths, 10)
    assert within([str(big)], 101) and not within([str(big)], 100)


def test_a_small_plan_is_removed_by_the_writer_itself_and_a_big_one_by_a_child(tmp_path: Path) -> None:
    """The usual plan (an old run's snapshot) goes at once, in the calling process, without a fork;
    one over INLINE_ENTRIES goes to a child process, as before."""
    from loomrun.writer.retention import INLINE_ENTRIES, Retention

    runtime = tmp_path / "runtime"
    now = time.time_ns()
    ids = [fake_run(runtime, now - i * HOUR_NS) for i in range(6)]  # the oldest loses its snapshot
    small = Retention(runtime, 50, 14 * 86400.0)
    assert small.pid is None and small.fd is None  # no child was forked
    assert not _exists(runtime, "workspaces", ids[5]) and _exists(runtime, "logs", ids[5])
    small.finish()
    assert small.report() == ({"planned": 1, "removed": 1, "failed": []}, "")

    big_id = fake_run(runtime, now - 7 * HOUR_NS, jobs=INLINE_ENTRIES)  # past `runs: 6`: all of it goes
    big = Retention(runtime, 6, 14 * 86400.0)
    assert big.pid is not None and big.fd is not None, "a big plan is a child's"
    try:
        while big.read():  # every item reported, then EOF: the child is done
            pass
        big.close()
    finally:
        big.finish()  # reaps it
    assert big.report() == ({"planned": 1, "removed": 1, "failed": []}, "")
    assert not _exists(runtime, "logs", big_id) and not _exists(runtime, "receipts", f"{big_id}.json")
    assert sorted(p.name for p in (runtime / "logs").iterdir()) == sorted(ids)


def test_what_a_small_plan_cannot_remove_is_reported_as_a_childs_failures_are(tmp_path: Path) -> None:
    from loomrun.writer.retention import Retention

    runtime = tmp_path / "runtime"
    now = time.time_ns()
    ids = [fake_run(runtime, now - i * HOUR_NS, snapshot=False) for i in range(3)]
    stuck = runtime / "logs" / ids[2] / "events.jsonl"
    with _immutable(stuck):
        retention = Retention(runtime, 2, 14 * 86400.0)
        assert retention.pid is None
    block, warning = retention.report()
    assert block == {"planned": 1, "removed": 0,
                     "failed": [{"path": str(runtime / "logs" / ids[2]), "error": "Operation not permitted"}]}
    assert warning == f"retention could not remove {runtime / 'logs' / ids[2]}: Operation not permitted"
    assert not _exists(runtime, "receipts", f"{ids[2]}.json")  # the receipt went first, as in a child
