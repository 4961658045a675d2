"""What a person sees of `loom run` on stderr (spec §1.1, §11). Runs in the supervisor.

Two renderers of one event stream. `Terminal`, here: one line per event (spec §1.1), for pipes,
files, CI and TERM=dumb. `live.LiveTerminal`: a region of running jobs redrawn on a terminal, a
subclass that prints every line of this one above its region (it overrides `write`); it is
imported only when it is used, and this package is one module on the start-up path, as the
single `terminal.py` before it was. `summary.py` (the table at the end) is imported at the end.
Verbosity changes only what reaches the terminal; the runtime logs are always complete.

Callers use: `event`, `detail`, `warning`, `line`, `job_started`, `step`, `job_ended`, `summary`,
`finished`; the event loop also `plan`, `wake_in` and `tick`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from loomrun.protocol.messages import JobEnded

COLORS = {"green": "32", "red": "31", "yellow": "33", "dim": "2", "bold": "1"}
WORDS = {"success": "passed", "failed": "failed", "canceled": "canceled", "skipped": "skipped"}
WORD_COLORS = {"passed": "green", "failed": "red", "canceled": "yellow", "skipped": "yellow"}

__all__ = ["Terminal", "choose"]


class Terminal:
    live = False  # a live region is drawn (live.LiveTerminal)

    def __init__(self, verbose: bool = False, quiet: bool = False, stream: TextIO | None = None,
                 prefix: str = "", final: bool = True) -> None:
        self.out = stream or sys.stderr
        self.verbose = verbose and not quiet
        self.quiet = quiet
        self.prefix = prefix  # "[cache off] " for a --cache-diff pass
        self.final = final  # print the summary, the closing status and receipt lines
        # TERM=dumb: a terminal that shows escape codes as text gets none; CI: a log, not a person
        # at a terminal, so plain lines with no control character (spec §11)
        self.color = (self.out.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
                      and not in_ci())
        self.warnings: list[str] = []

    def paint(self, text: str, color: str) -> str:
        return f"\x1b[{COLORS[color]}m{text}\x1b[0m" if self.color else text

    def line(self, text: str) -> None:
        self.write(text + "\n")

    def write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass  # a closed terminal must not stop the run; the logs have everything

    def event(self, text: str) -> None:
        if not self.quiet:
            self.line(self.prefix + text)

    def detail(self, text: str) -> None:
        if self.verbose:
            self.line(self.prefix + self.paint(text, "dim"))

    def warning(self, text: str) -> None:
        """`warning: <text>` now, and once more under the summary (spec §11)."""
        self.warnings.append(text)
        self.event(f"warning: {text}")

    # -- progress (the live region's input; nothing to print here) --------------------------------
    def plan(self, jobs: int) -> None:
        """The run is about to start `jobs` jobs."""

    def step(self, name: str, index: int) -> None:
        """Job `name` began its step `index` (1-based)."""

    def wake_in(self) -> float | None:
        """Seconds until `tick` has something to draw; None: nothing to wait for."""
        return None

    def tick(self) -> None:
        """Called by the event loop after every wake-up."""

    # -- jobs and the run ----------------------------------------------------------------------
    def job_started(self, name: str, provider: str, image: str | None, steps: int = 0) -> None:
        self.event(f'job "{name}" started ({provider})')
        if image:
            self.detail(f'job "{name}": image {image}')

    def job_ended(self, name: str, status: str, seconds: float | None, why: str, *,
                  tail: Sequence[str] = (), logs_hint: str | None = None) -> None:
        """`tail`: a failed job's last output lines (redacted, without control characters), shown
        under its line; `logs_hint`: the `loom logs` command that shows the rest (spec §11)."""
        took = f" in {seconds:.2f}s" if seconds is not None else ""
        word = WORDS[status]
        self.event(f'job "{name}" {self.paint(word, WORD_COLORS[word])}{took}{f" ({why})" if why else ""}')
        for line in tail:
            self.event(f"    {line}")
        if logs_hint:
            self.event(f"  logs: {logs_hint}")

    def summary(self, ended: Sequence[JobEnded], deps: Mapping[str, Sequence[str]], wall_s: float) -> None:
        """The table of every job, the wall time and the critical path (not with -q)."""
        if self.quiet or not self.final or not ended:
            return
        from loomrun.supervisor.terminal.summary import render

        for text in render(ended, deps, wall_s, self.warnings, self.paint):
            if text:
                self.event(text)
            else:  # the blank line before the table, without a --cache-diff pass's prefix
                self.line("")

    def finished(self, passed: bool, receipt: str | None, error: str | None) -> None:
        if not self.final:
            return
        status = self.paint("passed", "green") if passed else self.paint("failed", "red")
        self.line(f"loom run {status}")
        if receipt:
            self.line(f"receipt: {receipt}")
        if error and (not self.quiet or not receipt):  # no receipt: the error is the only pointer left
            self.line(f"loom run: {error}")


def in_ci() -> bool:
    """`CI` set, as CI services do (`CI=true`; loom's own jobs too, spec §2), and not "false"/"0"."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def choose(*, verbose: bool, quiet: bool, stream_output: bool) -> Terminal:
    """The live region when stderr is a terminal that understands it and nothing else writes to it
    (with --stream the writer prints job output straight to stderr), outside CI (spec §11: pipe,
    file, CI get the plain lines); the plain lines otherwise."""
    term = os.environ.get("TERM", "")
    if quiet or stream_output or term in ("", "dumb") or in_ci() or not sys.stderr.isatty():
        return Terminal(verbose=verbose, quiet=quiet)
    from loomrun.supervisor.terminal.live import LiveTerminal

    return LiveTerminal(verbose=verbose)

