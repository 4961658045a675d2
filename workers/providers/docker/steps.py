"""A running step of a Docker job: one run by the container's shell (`SessionStep`) or, for a command
the attach socket cannot carry, one exec (`ExecStep`). Both end the way the worker waits on any
step: a sentinel fd that becomes readable, and the exit code. Worker process (threads of it).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from docker.utils.socket import STDERR, STDOUT

from workers.providers.docker.engine import reason

if TYPE_CHECKING:
    from workers.providers.docker.session import Session


def _write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        return False  # the reader is gone; keep draining the exec so it can finish
    return True


class _StepEnd:
    """How a step run by another thread ends: `sentinel` is the read end of a pipe that gets one byte
    when the step is over. The byte is written and the write end closed before `wait()` returns, so
    a caller may close the read end at once (a write to a closed pipe would kill the worker with
    SIGPIPE); `poll()` answers from the moment the byte is on its way."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._done = threading.Event()
        self._finished = False
        self.code: int | None = None

    @property
    def sentinel(self) -> int:
        return self._read

    def poll(self) -> int | None:
        return self.code if self._finished else None

    def wait(self, timeout: float | None = None) -> int | None:
        self._done.wait(timeout)
        return self.poll()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._read)

    def _end(self, code: int) -> None:
        if self._finished:
            return
        self.code = code
        self._finished = True
        with contextlib.suppress(OSError):
            os.write(self._write, b"x")
        with contextlib.suppress(OSError):
            os.close(self._write)
        self._done.set()


class ExecStep(_StepEnd):
    """One exec (steps the session cannot carry): a pump thread copies its demuxed output into the
    step's fds as it arrives.

    The handle owns the two fds (as the host provider does, the caller hands them over) and closes
    them when the exec's output ends, so the reader sees EOF.
    """

    def __init__(self, api: Any, exec_id: str, stream: Iterator[Any], stdout_fd: int, stderr_fd: int) -> None:
        super().__init__()
        self._api = api
        self._exec_id = exec_id
        self._fds = (stdout_fd, stderr_fd)
        self._thread = threading.Thread(target=self._pump, args=(stream,), name=f"exec-{exec_id[:12]}", daemon=True)
        self._thread.start()

    def _pump(self, stream: Iterator[Any]) -> None:
        code = 255
        try:
            for out, err in stream:
                if out:
                    _write_all(self._fds[0], out)
                if err:
                    _write_all(self._fds[1], err)
            code = self._exit_code()
        except Exception as exc:  # the engine went away mid-step: say so in the step's own stderr
            _write_all(self._fds[1], f"loom: lost the Docker engine during the step: {reason(exc)}\n".encode())
        finally:
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._end(code)

    def _exit_code(self) -> int:
        # The stream can end a moment before the engine records the exit code.
        for _ in range(50):
            info = self._api.exec_inspect(self._exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            time.sleep(0.02)
        return 137  # still unknown: the container was killed under the exec


class SessionStep(_StepEnd):
    """A step run by the container's shell. Owns its two fds, closes each when its stream's marker
    arrives (so the reader sees EOF), and ends with the exit code the marker carries."""

    def __init__(self, session: Session, stdout_fd: int, stderr_fd: int) -> None:
        super().__init__()
        self.session = session
        self.fds = {STDOUT: stdout_fd, STDERR: stderr_fd}
        self.buf: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray()}
        self.after: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray()}
        self.open = {STDOUT: True, STDERR: True}
        self.marked: int | None = None  # the exit code the stdout marker carried

    def feed(self, stream: int, data: bytes) -> None:
        if not self.open[stream]:
            self.after[stream] += data
            return
        buf = self.buf[stream]
        buf += data
        mark = self.session.nonce  # wherever it starts: a last line without a newline ends right before it
        at = buf.find(mark)
        if at < 0:
            keep = _prefix_at_end(buf, mark)  # a marker may be split across frames: hold back only that
            if len(buf) > keep:
                _write_all(self.fds[stream], bytes(buf[: len(buf) - keep]))
                del buf[: len(buf) - keep]
            return
        tail = bytes(buf[at + len(mark):])
        end = tail.find(b"\n")
        if end < 0:  # the rest of the marker line is still on its way
            if at:
                _write_all(self.fds[stream], bytes(buf[:at]))
                del buf[:at]
            return
        _write_all(self.fds[stream], bytes(buf[:at]))
        if stream == STDOUT:
            try:
                self.marked = int(tail[:end].strip())
            except ValueError:
                self.marked = 255
        buf.clear()
        self.after[stream] += tail[end + 1:]
        self._close_stream(stream)
        if not any(self.open.values()):
            self.session.finished(self, self.after)
            self._end(255 if self.marked is None else self.marked)

    def lost(self) -> None:
        """The container's shell is gone (killed, stopped, the engine went away) mid-step."""
        for stream in (STDOUT, STDERR):
            if self.open[stream]:
                if self.buf[stream]:
                    _write_all(self.fds[stream], bytes(self.buf[stream]))
                self._close_stream(stream)
        self._end(137 if self.marked is None else self.marked)

    def _close_stream(self, stream: int) -> None:
        self.open[stream] = False
        with contextlib.suppress(OSError):
            os.close(self.fds[stream])


DockerStep = SessionStep | ExecStep


def _prefix_at_end(buf: bytearray, mark: bytes) -> int:
    """Length of the longest end of `buf` that is a proper beginning of `mark` (0 if none)."""
    start = max(0, len(buf) - len(mark) + 1)
    at = buf.find(mark[:1], start)
    while at >= 0:
        if mark.startswith(bytes(buf[at:])):
            return len(buf) - at
        at = buf.find(mark[:1], at + 1)
    return 0

