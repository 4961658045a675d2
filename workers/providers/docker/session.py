"""The job container's shell session: `/bin/sh` as the container's main process, reading one line of
shell per step from the attach socket, and one reader thread routing the attach stream to the step in
flight. Worker process (the reader is a thread of it).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from typing import Any

from docker.utils.socket import STDERR, STDOUT, frames_iter

from workers.providers.docker.engine import CHUNK
from workers.providers.docker.steps import SessionStep

# The job container's main process: a shell that reads its commands from the attach socket (stdin).
SESSION_ENTRYPOINT = ["/bin/sh"]
# First thing sent to it: on TERM (`docker stop`), forward TERM to every process of the container and
# exit once they are gone, so the steps get the grace period and the engine's SIGKILL ends the rest.
# Its own messages (a shell reports a child killed by a signal: "Terminated") go nowhere; fd 3 is the
# container's stderr, which the steps get.
# The shell acts on a TERM only between commands: after a step's command and before the marker that
# follows it. So the trap prints the marker of a step in flight itself (`$?` is the step's status
# there), or a step that handled its TERM would be reported killed (137) instead of its own code.
PREAMBLE = (
    "trap 'loom_st=$?; if [ -n \"$loom_busy\" ]; then printf \"%s %d\\n\" {nonce} \"${{loom_rc:-$loom_st}}\"; "
    "printf \"%s\\n\" {nonce} >&3; fi; "
    "kill -TERM -1 2>/dev/null; while kill -0 -1 2>/dev/null; do sleep 0.1; done; exit 0' TERM\n"
    "exec 3>&2 2>/dev/null\n"
    "echo loom-idle\n"
)
IDLE_MARK = b"loom-idle"
# Bytes a step command may not carry over the attach socket (the engine's detach keys are control
# characters): such a step runs as an exec instead.
RAW_UNSAFE = frozenset(chr(c) for c in range(32) if chr(c) not in "\t\n") | {"\x7f"}


class Session:
    """The job container's `/bin/sh`, fed through the attach socket: one step is one line of shell
    sent to it, so a step costs a write instead of an exec round trip (~40 ms of the engine's time).

    One reader thread demultiplexes the attach stream for the container's life and routes it to the
    step in flight. The shell ends each step by printing a marker with a per-container nonce on
    stdout (with the exit code) and on stderr; everything before a stream's marker is the step's.
    """

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.raw = getattr(sock, "_sock", sock)
        self.raw.settimeout(None)  # a step may be silent for longer than the client's timeout
        self.nonce = b"loom-" + os.urandom(16).hex().encode()
        self.cond = threading.Condition()
        self.up = False  # the idle mark was seen
        self.ended = False  # the attach stream ended: the container's shell is gone
        self.early = bytearray()  # output before the idle mark (why a container did not start)
        self.step: SessionStep | None = None
        self.pending: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray()}
        self.thread = threading.Thread(target=self._read, name="docker-attach", daemon=True)
        self.thread.start()

    def send(self, text: str) -> None:
        self.raw.sendall(text.encode())

    def preamble(self) -> str:
        """What the shell is told first (`PREAMBLE`, with this container's nonce)."""
        return PREAMBLE.format(nonce=self.nonce.decode())

    def wait_up(self, timeout_s: float) -> bool:
        with self.cond:
            self.cond.wait_for(lambda: self.up or self.ended, timeout_s)
            return self.up

    def run(self, command: str, trace: bool, stdout_fd: int, stderr_fd: int) -> SessionStep:
        step = SessionStep(self, stdout_fd, stderr_fd)
        quoted = "'" + command.replace("'", "'\\''") + "'"
        nonce = self.nonce.decode()
        line = (f"loom_rc=; loom_busy=1; /bin/sh {'-x ' if trace else ''}-c {quoted} </dev/null 2>&3 3>&-; "
                f"loom_rc=$?; printf '%s %d\\n' {nonce} \"$loom_rc\"; printf '%s\\n' {nonce} >&3; loom_busy=\n")
        with self.cond:
            if self.ended:
                step.lost()
                return step
            step.buf = {k: bytearray(v) for k, v in self.pending.items()}  # stray output of an earlier step
            for v in self.pending.values():
                v.clear()
            self.step = step
        try:
            self.send(line)
        except OSError:  # the shell is gone: the step ends here, unless the reader already ended it
            with self.cond:
                mine = self.step is step
                if mine:
                    self.step = None
            if mine:
                step.lost()
        return step

    def call(self, command: str) -> tuple[int, str]:
        """Run a command of loom's own to its end: (exit code, stdout and stderr)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        step = self.run(command, False, out_w, err_w)
        chunks: list[bytes] = []
        with selectors.DefaultSelector() as sel:
            for fd in (out_r, err_r):
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map():
                for key, _ in sel.select():
                    data = os.read(key.fd, CHUNK)
                    if data:
                        chunks.append(data)
                    else:
                        sel.unregister(key.fd)
                        os.close(key.fd)
        code = step.wait()
        step.close()
        return (255 if code is None else code), b"".join(chunks).decode(errors="replace")

    def finished(self, step: SessionStep, after: dict[int, bytearray]) -> None:
        with self.cond:
            if self.step is step:
                self.step = None
                for k, v in after.items():
                    self.pending[k] += v

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.raw.shutdown(2)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.thread.join(5.0)

    def _read(self) -> None:
        try:
            for stream, data in frames_iter(self.sock, tty=False):  # type: ignore[no-untyped-call]
                if stream in (STDOUT, STDERR) and data:
                    self._route(stream, data)
        except Exception:  # the socket closed under us (cleanup) or the engine went away
            pass
        finally:
            with self.cond:
                self.ended = True
                step, self.step = self.step, None
                self.cond.notify_all()
            if step is not None:
                step.lost()

    def _route(self, stream: int, data: bytes) -> None:
        with self.cond:
            if not self.up:
                self.early += data
                if stream == STDOUT and IDLE_MARK + b"\n" in self.early:
                    self.up = True
                    self.cond.notify_all()
                return
            step = self.step
            if step is None:
                self.pending[stream] += data
                return
        step.feed(stream, data)

