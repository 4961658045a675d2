"""Human output on stderr, one line per event (spec §1.1). Runs in the supervisor.

Verbosity changes only what reaches the terminal; the runtime logs are always complete.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

COLORS = {"green": "32", "red": "31", "yellow": "33", "dim": "2"}


class Terminal:
    def __init__(self, verbose: bool = False, quiet: bool = False, stream: TextIO | None = None,
                 prefix: str = "", final: bool = True) -> None:
        self.out = stream or sys.stderr
        self.verbose = verbose and not quiet
        self.quiet = quiet
        self.prefix = prefix  # "[cache off] " for a --cache-diff pass
        self.final = final  # print the closing status and receipt lines
        self.color = self.out.isatty() and "NO_COLOR" not in os.environ

    def paint(self, text: str, color: str) -> str:
        return f"\x1b[{COLORS[color]}m{text}\x1b[0m" if self.color else text

    def line(self, text: str) -> None:
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # a closed terminal must not stop the run; the logs have everything

    def event(self, text: str) -> None:
        if not self.quiet:
            self.line(self.prefix + text)

    def detail(self, text: str) -> None:
        if self.verbose:
            self.line(self.prefix + self.paint(text, "dim"))

    def job_started(self, name: str, provider: str, image: str | None) -> None:
        self.event(f'job "{name}" started ({provider})')
        if image:
            self.detail(f'job "{name}": image {image}')

    def job_ended(self, name: str, status: str, seconds: float | None, why: str, *,
                  tail: Sequence[str] = (), logs_hint: str | None = None) -> None:
        """`tail`: a failed job's last output lines (redacted, without control characters), shown
        under its line; `logs_hint`: the `loom logs` command that shows the rest (spec §11)."""
        took = f" in {seconds:.2f}s" if seconds is not None else ""
        word = {"success": "passed", "failed": "failed", "canceled": "canceled", "skipped": "skipped"}[status]
        color = {"passed": "green", "failed": "red", "canceled": "yellow", "skipped": "yellow"}[word]
        self.event(f'job "{name}" {self.paint(word, color)}{took}{f" ({why})" if why else ""}')
        for line in tail:
            self.event(f"    {line}")
        if logs_hint:
            self.event(f"  logs: {logs_hint}")

    def finished(self, passed: bool, receipt: str | None, error: str | None) -> None:
        if not self.final:
            return
        status = self.paint("passed", "green") if passed else self.paint("failed", "red")
        self.line(f"loom run {status}")
        if receipt:
            self.line(f"receipt: {receipt}")
        if error and (not self.quiet or not receipt):  # no receipt: the error is the only pointer left
            self.line(f"loom run: {error}")
