"""`loom` in a real pseudo-terminal, and a small screen that replays what it printed.

Runs in the pytest process. `run_in_pty` starts the real `loom` with stdout and stderr on the slave
side of a pty of a given size and records every chunk read from the master with its arrival time.
`Screen` applies the bytes the way a VT100-style terminal does, for exactly the sequences the live
renderer uses (CR, LF, cursor up, erase below, SGR colours); anything else fails the test, so an
unexpected control sequence cannot slip through.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from tests.helpers import LOOM
from tests.process.runner import loom_env

CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


class PtyRun(NamedTuple):
    code: int
    raw: bytes  # everything the terminal received, in order
    chunks: list[tuple[float, bytes]]  # (monotonic arrival time, bytes)
    seconds: float  # from start to exit


def run_in_pty(args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, cols: int = 120,
               rows: int = 40, timeout: float = 120.0, color: bool = False,
               type_when: tuple[Path, bytes] | None = None) -> PtyRun:
    """`type_when` (file, keys): the pty is loom's controlling terminal, and the keys are typed
    once the file exists (b"\\x03": a real ^C, sent by the terminal to loom's process group)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    full_env = loom_env(**{"TERM": "xterm-256color", **(env or {})})
    if color:
        del full_env["NO_COLOR"]
    start = time.monotonic()
    proc = subprocess.Popen([*LOOM, *args], cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=_take_the_terminal if type_when else None)
    os.close(slave)
    chunks: list[tuple[float, bytes]] = []
    deadline = start + timeout
    try:
        while time.monotonic() < deadline:
            if type_when is not None and type_when[0].exists():
                os.write(master, type_when[1])
                type_when = None
            ready, _, _ = select.select([master], [], [], 0.1 if type_when else 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave end is closed
                break
            if not data:
                break
            chunks.append((time.monotonic(), data))
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return PtyRun(code, b"".join(c for _, c in chunks), chunks, time.monotonic() - start)


def _take_the_terminal() -> None:
    # In the child, after setsid(): stdout (the slave) becomes the controlling terminal, and loom's
    # process group its foreground group, which the line discipline sends ^C's SIGINT to.
    fcntl.ioctl(1, termios.TIOCSCTTY, 0)


class Screen:
    """Lines of the terminal (scrollback included) after the bytes fed so far."""

    def __init__(self) -> None:
        self.lines: list[str] = [""]
        self.row = 0
        self.col = 0

    def feed(self, data: bytes) -> None:
        text = data.decode("utf-8")
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                m = CSI.match(text, i)
                assert m is not None, f"unknown escape sequence at {text[i:i + 12]!r}"
                self._csi(m.group(1), m.group(2))
                i = m.end()
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
                if self.row == len(self.lines):
                    self.lines.append("")
            else:
                assert ch >= " " or ch == "\t", f"control character {ch!r} on the terminal"
                line = self.lines[self.row].ljust(self.col)
                self.lines[self.row] = line[: self.col] + ch + line[self.col + 1:]
                self.col += 1
            i += 1

    def _csi(self, params: str, final: str) -> None:
        if final == "m":  # colours: no effect on the text
            return
        if final == "A":
            self.row = max(0, self.row - int(params or "1"))
        elif final == "J" and params in ("", "0"):
            self.lines[self.row] = self.lines[self.row][: self.col]
            del self.lines[self.row + 1:]
        elif final == "K" and params in ("", "0"):
            self.lines[self.row] = self.lines[self.row][: self.col]
        else:
            raise AssertionError(f"unexpected control sequence ESC[{params}{final}")

    def text(self) -> list[str]:
        out = [line.rstrip() for line in self.lines]
        while out and not out[-1]:
            out.pop()
        return out


def screen_of(raw: bytes) -> list[str]:
    screen = Screen()
    screen.feed(raw)
    return screen.text()
