"""The live renderer (spec §11): on a terminal, a region at the bottom of the screen with one line
per running job (name, provider, current step n/N, elapsed seconds) and a counts line; every other
line (a job's end, a warning, -v details) is printed above it and scrolls away as in the plain
renderer. Runs in the supervisor, imported only when stderr is a terminal (never with a pipe, a
file, TERM=dumb, CI, -q, --stream or --cache-diff).

No thread and no timer: the supervisor's event loop already waits with a timeout (its next
deadline); it also waits at most `wake_in()` and calls `tick()` after every wake-up. A redraw is
one write of a few hundred bytes: cursor up over the region, clear to the end of the screen, the
lines above (if any), the region again. The region is drawn at most 10 times a second (a change
waits for the next tenth), and else only when a job's elapsed seconds move on. Lines
longer than the terminal are cut, so the region's height is always its number of lines.

Hand-written ANSI rather than a library (measured, see ARCHITECTURE.md): importing `rich.live`
took ~60 ms warm, a redraw through it ~20x the CPU of this one, and its refresh is a thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from loomrun.supervisor.terminal import Terminal

if TYPE_CHECKING:
    from loomrun.protocol.messages import JobEnded

MIN_GAP_S = 0.1  # at most 10 redraws a second
SLACK_S = 0.002
NAME_MAX = 32


class Running:
    __slots__ = ("provider", "since", "step", "steps")

    def __init__(self, provider: str, steps: int, since: float) -> None:
        self.provider = provider
        self.steps = steps
        self.step = 0  # 0: not in a step yet (preparing)
        self.since = since


def elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s"


class LiveTerminal(Terminal):
    live = True

    def __init__(self, verbose: bool = False, stream: TextIO | None = None, prefix: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(verbose=verbose, quiet=False, stream=stream, prefix=prefix)
        self.clock = clock
        self.running: dict[str, Running] = {}  # in start order
        self.counts = {"passed": 0, "failed": 0, "skipped": 0, "canceled": 0}
        self.total = 0
        self.shown = False  # plan() was called: the region exists
        self.height = 0  # lines of the region on the screen now
        self.last = float("-inf")  # when it was last drawn
        self.next_second = 0.0
        self.dirty = False
        self.draws = 0
        encoding = (getattr(self.out, "encoding", None) or "").lower().replace("-", "")
        self.dot = " \u00b7 " if encoding.startswith("utf") else " | "

    # -- the region ------------------------------------------------------------------------------
    def _erase(self) -> str:
        if not self.height:
            return ""
        up, self.height = self.height, 0
        return f"\r\x1b[{up}A\x1b[J"

    def _region(self, now: float) -> str:
        try:
            cols, rows = os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError):
            cols, rows = 80, 24
        width = max(20, cols - 1)
        names = list(self.running)
        room = max(1, rows - 3)
        more = len(names) - room if len(names) > room else 0
        if more:
            names = names[: room - 1]
        pad = min(NAME_MAX, max((len(n) for n in names), default=0))
        out = []
        for name in names:
            job = self.running[name]
            where = f"step {job.step}/{job.steps}" if job.step else "preparing"
            text = f"  {name[:NAME_MAX].ljust(pad)}  {job.provider:<6}  {where:<11} {elapsed(now - job.since)}"
            out.append(text[:width])
        if more:
            out.append(f"  ... and {more + 1} more running"[:width])
        out.append(self._counts()[:width] if not self.color else self._counts(width))
        self.height = len(out)
        self.last, self.dirty = now, False
        # The next frame without a change: when the first running job's elapsed seconds move on.
        self.next_second = min((j.since + int(now - j.since) + 1 for j in self.running.values()), default=0.0)
        self.draws += 1
        return "".join(line + "\n" for line in out)

    def _counts(self, width: int = 0) -> str:
        finished = sum(self.counts.values())
        parts = [(f"{len(self.running)} running", None),
                 (f"{self.counts['passed']} passed", "green"), (f"{self.counts['failed']} failed", "red")]
        parts += [(f"{self.counts[k]} {k}", "yellow") for k in ("skipped", "canceled") if self.counts[k]]
        parts.append((f"{max(0, self.total - finished - len(self.running))} pending", None))
        plain = self.dot.join(text for text, _ in parts)
        if not width:
            return plain
        if len(plain) > width:  # too narrow for colour codes to be cut safely
            return plain[:width]
        return self.dot.join(self.paint(text, color) if color else text for text, color in parts)

    def _due(self, now: float) -> bool:
        if not self.shown:
            return False
        now += SLACK_S  # a wait() that returns a hair early still draws
        if now - self.last < MIN_GAP_S:
            return False
        return self.dirty or (bool(self.running) and now >= self.next_second)

    # -- the Terminal interface ----------------------------------------------------------------------
    def write(self, text: str) -> None:
        """Above the region: erase it, print, and draw it again if a redraw is allowed now (else
        at the next tick, at most a tenth of a second later)."""
        now = self.clock()
        erase = self._erase()
        region = self._region(now) if self.shown and now - self.last >= MIN_GAP_S else ""
        if self.shown and not region:
            self.dirty = True
        super().write(erase + text + region)

    def plan(self, jobs: int) -> None:
        self.total = jobs
        self.shown = True
        self.dirty = True

    def step(self, name: str, index: int) -> None:
        job = self.running.get(name)
        if job is not None:
            job.step = index
            self.dirty = True

    def wake_in(self) -> float | None:
        if not self.shown:
            return None
        if not self.dirty and not self.running:
            return None
        due = self.last + MIN_GAP_S if self.dirty else max(self.last + MIN_GAP_S, self.next_second)
        return max(0.0, due - self.clock())

    def tick(self) -> None:
        now = self.clock()
        if self._due(now):
            erase = self._erase()
            super().write(erase + self._region(now))

    def job_started(self, name: str, provider: str, image: str | None, steps: int = 0) -> None:
        # No `started` line: a running job is a line of the region.
        self.running[name] = Running(provider, steps, self.clock())
        self.dirty = True
        if image:
            self.detail(f'job "{name}": image {image}')

    def job_ended(self, name: str, status: str, seconds: float | None, why: str, **more: Any) -> None:
        self.running.pop(name, None)
        word = {"success": "passed"}.get(status, status)
        self.counts[word] = self.counts.get(word, 0) + 1
        self.dirty = True
        super().job_ended(name, status, seconds, why, **more)  # what it prints goes above the region

    def close(self) -> None:
        """The region is gone; what stays on the screen are the plain lines."""
        if self.shown:
            self.shown = False
            super().write(self._erase())

    def summary(self, ended: Sequence[JobEnded], deps: Mapping[str, Sequence[str]], wall_s: float) -> None:
        self.close()
        super().summary(ended, deps, wall_s)

    def finished(self, passed: bool, receipt: str | None, error: str | None) -> None:
        self.close()
        super().finished(passed, receipt, error)
