"""Retention's removal runs in a child process of the writer (spec §13, ARCHITECTURE.md "Retention
and `loom gc`"): a run never waits for it beyond a short grace, the child never outlives its
writer, and what it had not removed is planned again. Real `loom` runs, a real retention child
(stopped with SIGSTOP so that it is still at work whatever this machine's speed), real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

from tests.process.runner import Background, load, make_repo, run_loom, writer_of
from tests.runfiles import DAY_NS, fake_run

HOUR_NS = DAY_NS // 24
DUE = 5  # the old runs past `runs: 2` (the run itself is one of the two)


def _repo(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A repo keeping two runs, with six old runs of 200 jobs each in its store (five are due), and
    one job that waits for the file `go` to appear."""
    go = tmp_path / "go"
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        wait:
          stage: s
          target: linux
          script: ["while [ ! -e {go} ]; do sleep 0.02; done"]
        """)
    (repo / ".loom" / "config.yml").write_text("runtime:\n  retention: {runs: 2}\n")
    runtime = repo / ".loom" / ".runtime"
    now = time.time_ns()
    ids = [fake_run(runtime, now - i * HOUR_NS, jobs=200) for i in range(1, 7)]
    return repo, go, ids


def _writer_and_child(loom_pid: int, timeout: float = 30) -> tuple[psutil.Process, psutil.Process]:
    """The writer and its retention child (the writer's only child), once the child is at work: it
    has asked for its parent-death signal and then closed every fd of the writer's but its pipe
    (`retention._remove_in_child`), so it holds no socket any more. Stopped before that, a child
    caught just after the fork would never ask, and would outlive its writer because of the test."""
    writer = writer_of(loom_pid, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = writer.children()
        if kids and not _holds_a_socket(kids[0].pid):
            return writer, kids[0]
        time.sleep(0.002)
    raise AssertionError("no writer with a retention child at work appeared")


def _holds_a_socket(pid: int) -> bool:
    """The writer's sockets (to the supervisor, to its workers) are what a fresh child inherits;
    the removal opens only folders and files, and reports on a pipe."""
    folder = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(folder)
    except OSError:
        return True  # gone, or not readable yet: not at work
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(f"{folder}/{fd}").startswith("socket:"):
                return True
    return False


def _gone(proc: psutil.Process, timeout: float) -> bool:
    """`proc` is no more, or a zombie (dead; reaped by whoever inherited it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def _logs(repo: Path) -> set[str]:
    return {p.name for p in (repo / ".loom" / ".runtime" / "logs").iterdir()}


def test_a_run_ends_while_its_retention_is_still_at_work_and_the_rest_is_planned_again(tmp_path: Path) -> None:
    repo, go, ids = _repo(tmp_path)
    run = Background(repo, "run", "--local")
    _writer, child = _writer_and_child(run.proc.pid)
    child.send_signal(signal.SIGSTOP)  # still at work, and it will not get any further on its own
    go.touch()
    result = run.finish(timeout=60)
    assert result.code == 0, result.stderr
    retention = result.receipt["retention"]
    assert retention["planned"] == DUE and retention["removed"] < DUE and retention["failed"] == [], retention
    assert not psutil.pid_exists(child.pid), "the retention child outlived the run"  # killed, and reaped
    left = _logs(repo)
    new = result.receipt["run_id"]
    assert {new, ids[0]} <= left and len(left) > 2, left  # the two newest, and what was still to go
    # What the killed child left (a run half removed included) is planned again, and goes.
    gc = run_loom(repo, "gc")
    assert gc.code == 0, gc.stderr
    assert _logs(repo) == {new, ids[0]}
    assert {p.name for p in (repo / ".loom" / ".runtime" / "receipts").iterdir()} == {f"{new}.json", f"{ids[0]}.json"}


def test_the_retention_child_dies_with_its_writer(tmp_path: Path) -> None:
    repo, go, _ids = _repo(tmp_path)
    run = Background(repo, "run", "--local")
    writer, child = _writer_and_child(run.proc.pid)
    child.send_signal(signal.SIGSTOP)  # alive (a stopped process still gets SIGKILL)
    writer.send_signal(signal.SIGKILL)
    assert _gone(child, timeout=10), "the retention child outlived its writer"  # its parent-death signal
    go.touch()
    result = run.finish(timeout=60)
    assert result.code in (0, 1), result.stderr  # a writer death fails the run, unless it was over
    assert load(result.receipt_path)["run_id"]  # a new writer took over and wrote the receipt
