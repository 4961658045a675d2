"""A failed job's last output lines, for the terminal under its `failed` line (spec §11). Runs in
the writer process, once per failed job.

The lines are read back from the end of the step's (or system section's) events file, already
redacted there, rather than kept while the step runs: keeping them cost every output batch of every
step, and up to 20 lines of up to 1 MiB each per running step.
"""

from __future__ import annotations

import json
import os
import re

TAIL_LINES = 20
TAIL_WIDTH = 500  # characters of one line shown; a longer one ends in "…"
BLOCK = 1 << 16
BUDGET = 8 << 20  # bytes read from the end at most (a run of huge lines shows what fits)
# Escape sequences (CSI, OSC, two-byte) and every other control character but the tab. A string:
# `re` compiles it on the first failed job, not at every start of `loom` (which imports this module).
_CONTROLS = (r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-_])?"
             r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def last_lines(path: str, count: int = TAIL_LINES) -> list[str]:
    """The last `count` output lines of an events file, oldest first, each made `terminal_safe`.
    The pieces of a long line (`continued`) make one line, shown from its start."""
    newest: list[str] = []  # newest first
    first_of: dict[str, int] = {}  # stream -> index in `newest` of its earliest line read so far
    try:
        with open(path, "rb") as fh:
            pos = end = fh.seek(0, os.SEEK_END)
            carry = b""
            while pos > 0 and len(newest) < count and end - pos < BUDGET:
                size = min(BLOCK, pos)
                pos -= size
                fh.seek(pos)
                parts = (fh.read(size) + carry).split(b"\n")
                carry = parts.pop(0) if pos > 0 else b""  # may be the end of an event that starts earlier
                for raw in reversed(parts):
                    _take(raw, newest, first_of)
    except OSError:
        return []
    return [terminal_safe(line) for line in reversed(newest[:count])]


def _take(raw: bytes, newest: list[str], first_of: dict[str, int]) -> None:
    if not raw.startswith(b'{"ts"') or b'"type":"output"' not in raw:
        return
    try:
        ev = json.loads(raw)
    except ValueError:
        return
    stream = ev.get("stream", "")
    lines = ev["lines"] if "lines" in ev else [ev.get("line", "")]
    if ev.get("continued") and stream in first_of:  # the start of a line already taken: show its start
        newest[first_of[stream]] = lines[-1]
        lines = lines[:-1]
        if not lines:
            return
    newest.extend(reversed(lines))
    first_of[stream] = len(newest) - 1


def terminal_safe(line: str) -> str:
    """A step's line as a terminal may show it: no escape sequences or other control characters
    (they would move the cursor or recolour what follows), at most TAIL_WIDTH characters."""
    cut = len(line) > 4 * TAIL_WIDTH  # a piece of a long line can be a megabyte: look at its start only
    line = re.sub(_CONTROLS, "", line[:4 * TAIL_WIDTH] if cut else line)
    line = line.expandtabs(8) if "\t" in line else line
    return line if len(line) <= TAIL_WIDTH and not cut else line[:TAIL_WIDTH - 1] + "…"
