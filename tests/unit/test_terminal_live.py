"""The live renderer's frame budget and region, on a clock the test moves (spec §11): at most 10
frames a second however many events arrive, a frame when an elapsed second moves on, the region
always erased by exactly its own height, and nothing of it left after `close`. The pty tests in
tests/e2e/test_terminal.py show the same on a real terminal."""

from __future__ import annotations

import io
import re

from loomrun.supervisor.terminal.live import LiveTerminal
from tests.e2e.ptyrun import screen_of


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def shown(out: io.StringIO) -> list[str]:
    """The screen after everything written so far (a tty turns each LF into CR LF)."""
    return screen_of(out.getvalue().replace("\n", "\r\n").encode())


def make() -> tuple[LiveTerminal, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    return LiveTerminal(stream=out, clock=clock), out, clock


def test_a_burst_of_events_is_drawn_at_most_ten_times_a_second() -> None:
    term, out, clock = make()
    term.plan(200)
    for i in range(200):  # 200 jobs start and end over one second: 400 changes, 200 lines above
        term.job_started(f"j{i}", "host", None, steps=1)
        term.step(f"j{i}", 1)
        clock.now += 0.0025
        term.tick()
        term.job_ended(f"j{i}", "success", 0.0025, "")
        clock.now += 0.0025
        term.tick()
    assert term.draws <= 11, term.draws
    wait = term.wake_in()
    assert wait is not None and wait <= 0.1  # the last change is drawn within a tenth of a second
    clock.now += wait
    term.tick()
    screen = shown(out)
    assert screen[-1] == "0 running | 200 passed | 0 failed | 0 pending"
    assert sum(1 for line in screen if line.endswith(" passed in 0.00s")) == 200


def test_an_idle_region_is_drawn_when_an_elapsed_second_moves_on() -> None:
    term, out, clock = make()
    term.plan(1)
    term.job_started("build", "docker", None, steps=3)
    term.tick()
    term.step("build", 2)
    clock.now += 0.1
    term.tick()
    assert term.draws == 2
    wait = term.wake_in()
    assert wait is not None and abs(wait - 0.9) < 1e-6  # nothing changes until build's 1s
    clock.now += 0.5
    term.tick()
    assert term.draws == 2
    clock.now += 0.4
    term.tick()
    assert term.draws == 3
    assert shown(out) == ["  build  docker  step 2/3    1s",
                                                  "1 running | 0 passed | 0 failed | 0 pending"]
    clock.now += 120
    term.tick()
    assert shown(out)[0].endswith("step 2/3    2m01s")


def test_lines_go_above_the_region_and_close_leaves_only_them() -> None:
    term, out, clock = make()
    term.plan(2)
    term.job_started("a", "host", None, steps=1)
    term.job_started("b", "host", None, steps=2)
    term.tick()
    clock.now += 0.5
    term.warning('job "a": cache path "x" matched nothing')
    term.job_ended("a", "failed", 0.5, "exit code 1")
    clock.now += 0.5
    term.tick()
    raw = out.getvalue()
    heights = [int(n) for n in re.findall(r"\x1b\[(\d+)A", raw)]
    assert heights and set(heights) <= {2, 3}  # the region's own height, never more
    assert shown(out) == [
        'warning: job "a": cache path "x" matched nothing',
        'job "a" failed in 0.50s (exit code 1)',
        "  b  host    preparing   1s",
        "1 running | 0 passed | 1 failed | 0 pending",
    ]
    term.close()
    assert shown(out) == [
        'warning: job "a": cache path "x" matched nothing', 'job "a" failed in 0.50s (exit code 1)']
    assert term.wake_in() is None
    term.tick()
    term.line("loom run failed")
    assert out.getvalue().endswith("\x1b[J" + "loom run failed\n")


def test_before_the_jobs_there_is_no_region() -> None:
    term, out, _ = make()
    term.warning('stage "x" has no jobs')
    term.tick()
    assert term.wake_in() is None
    assert out.getvalue() == 'warning: stage "x" has no jobs\n'
