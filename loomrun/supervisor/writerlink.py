"""The supervisor's end of the writer process, which may die at any moment. Runs in the supervisor.

Every record for the writer goes through a `WriterLink`, never through the pipe directly. When the
writer is found dead (a send fails with EPIPE, its pidfd fires, it exits before answering), the link
*takes over*: it reaps the dead writer and names its death (`writer process died (SIGKILL)`), forks
a new writer on the same logs dir, brings it up to date (RunStarted, the job roster, the abandoned
runs being marked, every JobEnded sent so far as a replay) and delivers the record again. Callers
never see a broken pipe: they see `deaths` grow (the loop then cancels the running jobs, and the
verdict names the first death). After `MAX_TAKEOVERS` deaths the link gives up: `broken` says why,
sends are dropped, and no receipt can be written.

Fault injection for tests: `LOOM_FAULT_KILL_WRITER=<Record>:<n>` (e.g. `JobEnded:2`) SIGKILLs the
writer just before the n-th record of that type goes to it, and waits until it is dead, so that
every kind of record can be the one whose send finds the writer gone (`WriterReady:1`: just before
its answer to RunStarted is read).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from typing import Any

from loomrun.proctree import describe_status
from loomrun.protocol import messages as m
from loomrun.writer import spawn as writer_process

MAX_TAKEOVERS = 3
READY_TIMEOUT_S = 30.0


def _fault(spec: str) -> tuple[str, int] | None:
    kind, _, nth = spec.partition(":")
    return (kind, int(nth)) if kind and nth.isdigit() else None


_FAULT = _fault(os.environ.get("LOOM_FAULT_KILL_WRITER", ""))


class WriterLink:
    def __init__(self, start: m.RunStarted) -> None:
        self.start = start
        self.handle: writer_process.WriterHandle | None = None
        self.deaths: list[str] = []  # how each writer that died went, in order
        self.broken: str | None = None  # set once no writer can be had: why
        self.failed: str | None = None  # WriterFailed at start: the runtime dir cannot be written
        self.logs_dir: str | None = None  # from the first WriterReady
        self._roster: m.JobRoster | None = None
        self._marks: list[m.MarkAbandoned] = []
        self._ended: list[m.JobEnded] = []
        self._counts: dict[str, int] = {}

    # -- what the event loop waits on ----------------------------------------------------------
    @property
    def conn(self) -> Connection | None:
        return self.handle.conn if self.handle is not None else None

    @property
    def sentinel(self) -> int | None:
        return self.handle.sentinel if self.handle is not None else None

    def waitables(self) -> list[Any]:
        return [] if self.handle is None else [self.handle.conn, self.handle.sentinel]

    # -- start ---------------------------------------------------------------------------------
    def begin(self) -> None:
        """Fork the writer and send it RunStarted, without waiting for its answer (`ready`): it makes
        the logs dir, importing its code first, while the caller goes on. Records sent meanwhile
        wait in the pipe, behind RunStarted. `broken` is set when no process can be forked."""
        while self.broken is None and not self._launch():
            self._buried()  # it died before RunStarted went in: count it, try again

    def ready(self) -> str | None:
        """The logs dir, once the writer answered RunStarted (a writer that died before answering is
        replaced, as a death at any other moment); None with `failed` or `broken` set."""
        while self.broken is None and self.logs_dir is None and self.failed is None:
            if _FAULT:
                self._inject("WriterReady")  # (a test: the writer dies before its answer is read)
            reply = self._reply(READY_TIMEOUT_S)
            if isinstance(reply, m.WriterReady):
                self.logs_dir = reply.logs_dir
            elif isinstance(reply, m.WriterFailed):
                self.failed = reply.message
            else:
                self.take_over()
        return self.logs_dir

    def _launch(self) -> bool:
        """Fork a writer and send it RunStarted; False when it died first or (with `broken` set) when
        no process could be forked."""
        try:
            self.handle = writer_process.spawn()
        except OSError as exc:
            self.broken = f"cannot start a writer process: {exc.strerror or exc}"
            return False
        return self._deliver_once(self.start)

    def _spawn(self) -> Any:
        """Fork a writer and send it RunStarted: its answer (WriterReady, WriterFailed), or None when
        it died or did not answer (or, with `broken` set, when no process could be forked)."""
        if not self._launch():
            return None
        reply = self._reply(READY_TIMEOUT_S)
        if isinstance(reply, m.WriterReady):
            self.logs_dir = self.logs_dir or reply.logs_dir
        return reply if isinstance(reply, (m.WriterReady, m.WriterFailed)) else None

    # -- sending -------------------------------------------------------------------------------
    def send(self, msg: Any) -> None:
        """Deliver `msg`, taking over from a dead writer as often as it takes (up to the limit)."""
        while self.broken is None:
            if self._deliver_once(msg):
                self._journal(msg)
                return
            self.take_over()

    def attach(self, job_id: str, fd: int) -> None:
        """AttachWorker followed by the writer's end of the job's socket (SCM_RIGHTS)."""
        while self.broken is None:
            if self._deliver_once(m.AttachWorker(job_id), fd):
                return
            self.take_over()

    def request(self, msg: Any, timeout_s: float) -> Any:
        """Send `msg` and wait for the writer's answer. None when the writer died on the way (it has
        been replaced: the caller decides what to send the new one); WriterFailed when it gave up."""
        if self.broken is not None:
            return m.WriterFailed(self.broken)
        if not self._deliver_once(msg):
            self.take_over()
            return None
        reply = self._reply(timeout_s)
        # An answer for a job's end line the loop no longer waits for: a record delivered again to
        # a writer that took over is answered by it, while the loop, seeing the death, printed the
        # line unanswered. It came first (the writer answers in order) and is not this reply.
        while isinstance(reply, m.JobWritten):
            reply = self._reply(timeout_s)
        if reply is None:
            self.take_over()
        return reply

    def _deliver_once(self, msg: Any, fd: int | None = None) -> bool:
        handle = self.handle
        if handle is None:
            return False
        if _FAULT:
            self._inject(type(msg).__name__)
        try:
            handle.conn.send(msg)
            if fd is not None:
                with socket.fromfd(handle.conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    reduction.sendfds(s, [fd])
        except OSError:
            return False
        return True

    def _journal(self, msg: Any) -> None:
        """What a writer that takes over must be told again."""
        if isinstance(msg, m.JobEnded):
            self._ended.append(msg)
        elif isinstance(msg, m.JobRoster):
            self._roster = msg
        elif isinstance(msg, m.MarkAbandoned):
            self._marks.append(msg)

    # -- replies -------------------------------------------------------------------------------
    def _reply(self, timeout_s: float) -> Any:
        """The writer's next message; None when it died first; WriterFailed when it did not answer."""
        handle = self.handle
        if handle is None:
            return None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return m.WriterFailed("the writer process did not answer")
            ready = wait([handle.conn, handle.sentinel], timeout=left)
            if handle.conn in ready:
                try:
                    return handle.conn.recv()
                except (EOFError, OSError):
                    return None
            if handle.sentinel in ready:
                return None

    def pending(self) -> list[Any]:
        """Messages the writer sent on its own (WriterFailed: a full disk) that are waiting."""
        handle = self.handle
        out: list[Any] = []
        if handle is None:
            return out
        try:
            while handle.conn.poll():
                out.append(handle.conn.recv())
        except (EOFError, OSError):
            pass  # its pidfd says it died; the loop takes over then
        return out

    # -- taking over ---------------------------------------------------------------------------
    def dead(self) -> bool:
        """True when the current writer has exited (its pidfd is readable)."""
        return self.handle is not None and bool(wait([self.handle.sentinel], timeout=0))

    def take_over(self) -> None:
        """The writer is gone (or must be): bury it and bring up a new one that knows the run so far."""
        self._buried()
        while self.broken is None:
            if isinstance(self._spawn(), m.WriterReady) and self._replay():
                return
            self._buried()

    def _replay(self) -> bool:
        records: list[Any] = [*self._marks]
        if self._roster is not None:
            records.append(self._roster)
        records += [e._replace(replay=True) for e in self._ended]
        return all(self._deliver_once(r) for r in records)

    def _buried(self) -> None:
        """Reap the current writer (killing it first if it still runs) and record how it died."""
        handle, self.handle = self.handle, None
        if handle is None:
            return
        with contextlib.suppress(OSError):
            handle.conn.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, signal.SIGKILL)  # a writer that stopped answering is as good as dead
        try:
            _, status = os.waitpid(handle.pid, 0)
            how = describe_status(status)
        except ChildProcessError:
            how = "unknown status"
        with contextlib.suppress(OSError):
            os.close(handle.sentinel)
        self.deaths.append(f"writer process died ({how})")
        if len(self.deaths) > MAX_TAKEOVERS:
            self.broken = f"{self.deaths[0]}; {len(self.deaths) - 1} writer(s) after it died too"

    # -- the end -------------------------------------------------------------------------------
    def close(self, timeout_s: float = 60.0) -> None:
        """EOF to the writer, which finishes what it was given and exits; reap it."""
        handle, self.handle = self.handle, None
        if handle is None:
            return
        with contextlib.suppress(OSError):
            handle.conn.close()
        with contextlib.suppress(OSError, ValueError):
            wait([handle.sentinel], timeout=timeout_s)  # its pidfd: readable the moment it exits
        with contextlib.suppress(ChildProcessError):
            os.waitpid(handle.pid, os.WNOHANG)
        with contextlib.suppress(OSError):
            os.close(handle.sentinel)

    # -- fault injection -----------------------------------------------------------------------
    def _inject(self, kind: str) -> None:
        assert _FAULT is not None
        want, nth = _FAULT
        if kind != want or self.handle is None:
            return
        self._counts[kind] = count = self._counts.get(kind, 0) + 1
        if count == nth:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.handle.pid, signal.SIGKILL)
            wait([self.handle.sentinel], timeout=10)
