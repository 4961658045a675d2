"""The Docker session's step markers, fed the way the engine may cut its frames: every split point,
a marker split across frames, a last line without a newline, bytes that look like the marker's
beginning. No engine: the parser and real pipes only."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from docker.utils.socket import STDERR, STDOUT

from workers.providers.docker.steps import SessionStep, _prefix_at_end

NONCE = b"loom-0123456789abcdef0123456789abcdef"


class _Session:
    def __init__(self) -> None:
        self.nonce = NONCE
        self.after: dict[int, bytearray] = {}

    def finished(self, step: Any, after: dict[int, bytearray]) -> None:
        self.after = after


def _run(out: bytes, err: bytes, cut: int) -> tuple[bytes, bytes, int | None, dict[int, bytearray]]:
    session = _Session()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    step = SessionStep(session, out_w, err_w)  # type: ignore[arg-type]
    got: dict[int, bytes] = {}

    def drain(fd: int, key: int) -> None:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        os.close(fd)
        got[key] = b"".join(chunks)

    threads = [threading.Thread(target=drain, args=(fd, key)) for fd, key in ((out_r, STDOUT), (err_r, STDERR))]
    for t in threads:
        t.start()
    for stream, data in ((STDOUT, out), (STDERR, err)):
        pieces = [data[:cut], data[cut:]] if cut else [data[i:i + 1] for i in range(len(data))]
        for piece in pieces:
            if piece:
                step.feed(stream, piece)
    for t in threads:
        t.join(10)
    code = step.wait(10)
    # Once wait() returns, the sentinel already holds its byte and its write end is closed: a caller
    # may close the read end at once (the writing thread must not then hit EPIPE: SIGPIPE kills a worker).
    assert os.read(step.sentinel, 2) == b"x" and os.read(step.sentinel, 2) == b""
    step.close()
    return got[STDOUT], got[STDERR], code, session.after


@pytest.mark.parametrize("cut", [0, 1, 5, 12, 20, 40])
def test_markers_split_anywhere(cut: int) -> None:
    out = b"one\nlo two loom-0\n" + b"no newline" + NONCE + b" 3\nafter\n"
    err = b"oops\n" + NONCE + b"\n"
    got_out, got_err, code, after = _run(out, err, cut)
    assert got_out == b"one\nlo two loom-0\nno newline"
    assert got_err == b"oops\n"
    assert code == 3
    assert bytes(after[STDOUT]) == b"after\n"  # output past the marker belongs to what comes next


def test_prefix_at_end() -> None:
    assert _prefix_at_end(bytearray(b"abc"), NONCE) == 0
    assert _prefix_at_end(bytearray(b"abc\n"), NONCE) == 0
    assert _prefix_at_end(bytearray(b"abcloom-01"), NONCE) == len(b"loom-01")
    assert _prefix_at_end(bytearray(b"l"), NONCE) == 1
    assert _prefix_at_end(bytearray(b"loom-x"), NONCE) == 0
