"""The writer process: one selector loop over the supervisor pipe, every worker socket and every
step's stdout/stderr pipe. The only code that writes under `.loom/.runtime/logs` and `receipts`.

It ignores ^C (the supervisor decides), survives a bad record (logged as an error event), reports
an unwritable runtime dir or a full disk to the supervisor as `WriterFailed`, and on EOF from the
supervisor finishes what it was given (drains worker sockets and output pipes) before exiting.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from loomrun.protocol import messages as m
from loomrun.writer.events import emit
from loomrun.writer.redact import Redactor
from loomrun.writer.runlog import RunLog, StepLog, mark_abandoned

if TYPE_CHECKING:
    from loomrun.writer.retention import Retention

READ_CHUNK = 1 << 20
# The longest piece of a line the writer holds: a longer line (output without newlines) is written
# in pieces of at most this many bytes, each but the last marked `"continued": true`, so the
# writer's memory stays bounded whatever a step prints (a 200 MB line took it to 931 MB before).
LINE_CHUNK = 1 << 20
DRAIN_AFTER_EOF_S = 30.0


class OutputStream:
    __slots__ = ("continued", "fd", "held", "job_id", "partial", "step", "stream")

    def __init__(self, job_id: str, step: StepLog, stream: str, fd: int) -> None:
        self.job_id = job_id
        self.step = step
        self.stream = stream
        self.fd = fd
        self.partial = b""  # redacted bytes after the last newline
        self.held = b""  # raw bytes that may be the start of a secret value (see redact.Redactor.split)
        self.continued = False  # pieces of the current line were written already


class Writer:
    def __init__(self, sup: Connection) -> None:
        self.sup = sup
        # Answers go out without ever blocking (see _send): a socket on the same connection, for
        # MSG_DONTWAIT sends, and the bytes the supervisor has not taken yet.
        self.sup_sock = socket.socket(fileno=os.dup(sup.fileno()))
        self.outbox = b""
        self.waiting = False  # the selector also watches for room on the supervisor socket
        self.sel = selectors.DefaultSelector()
        self.sel.register(sup, selectors.EVENT_READ, ("sup", None))
        self.log: RunLog | None = None
        self.workers: dict[str, Connection] = {}
        self.streams: dict[int, OutputStream] = {}
        self.redactor = Redactor()
        self.sup_open = True
        self.retention: Retention | None = None

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        deadline: float | None = None
        while self.sup_open or self.workers or self.streams:
            if not self.sup_open:
                deadline = deadline or time.monotonic() + DRAIN_AFTER_EOF_S
                if time.monotonic() > deadline:
                    break
            due = self.log.docs.due_in() if self.log is not None else None
            for key, events in self.sel.select(timeout=1.0 if due is None else min(1.0, due)):
                kind, arg = key.data
                try:
                    if kind == "sup":
                        if events & selectors.EVENT_WRITE:
                            self._push()
                        if events & selectors.EVENT_READ:
                            self._from_supervisor()
                    elif kind == "worker":
                        self._from_worker(arg)
                    elif kind == "retention":
                        self._from_retention()
                    else:
                        self._output(key.fd)
                except OSError as exc:
                    self._report_os_error(exc)
                except Exception as exc:  # a bad record must not take the writer down
                    self._bad_record(exc)
            if self.log is not None and self.log.docs.due_in() == 0.0:
                self._flush()
        self._flush()
        self._finish_retention()
        return 0

    def _flush(self) -> None:
        """One syncfs for every document written since the last flush, then their renames."""
        if self.log is not None:
            try:
                self.log.docs.flush()
            except OSError as exc:
                self._report_os_error(exc)

    def _report_os_error(self, exc: OSError) -> None:
        where = f" ({exc.filename})" if exc.filename else ""
        self._send(m.WriterFailed(f"{exc.strerror or exc}{where}"))

    def _bad_record(self, exc: Exception) -> None:
        if self.log is not None:
            with contextlib.suppress(OSError):
                emit(self.log.events, time.time_ns(), "error", "run", None,
                     code="LOOM_WRITER_BAD_RECORD", message=f"{type(exc).__name__}: {exc}")

    def _send(self, msg: Any) -> None:
        """Queue `msg` for the supervisor and send what the socket takes now. The writer never
        blocks on the supervisor: a supervisor busy sending a long run of `JobEnded` (a failure
        that skips a thousand jobs) while the answers fill the socket would otherwise leave each
        waiting for the other. The bytes are multiprocessing.Connection's framing."""
        if self.sup_open:
            data = reduction.ForkingPickler.dumps(msg)
            self.outbox += struct.pack("!i", len(data)) + bytes(data)
            self._push()

    def _push(self) -> None:
        try:
            sent = self.sup_sock.send(self.outbox, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:  # the supervisor is gone: nobody will read it
            sent = len(self.outbox)
        self.outbox = self.outbox[sent:]
        waiting = bool(self.outbox)
        if waiting != self.waiting and self.sup_open:  # the selector tells when the rest fits
            self.waiting = waiting
            self.sel.modify(self.sup, selectors.EVENT_READ | (selectors.EVENT_WRITE if waiting else 0),
                            ("sup", None))

    # -- supervisor records --------------------------------------------------------------------
    def _from_supervisor(self) -> None:
        try:
            msg = self.sup.recv()
        except (EOFError, OSError):
            self.sup_open = False
            self.sel.unregister(self.sup)
            self.outbox = b""
            return
        self.handle_supervisor(msg)

    def handle_supervisor(self, msg: Any) -> None:
        if isinstance(msg, m.RunStarted):
            self.log = RunLog(msg, self.redactor)
            self._send(m.WriterReady(str(self.log.logs_dir)))
        elif isinstance(msg, m.AttachWorker):
            with socket.fromfd(self.sup.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
                fd = reduction.recvfds(s, 1)[0]
            conn = Connection(fd)
            self.workers[msg.job_id] = conn
            self.sel.register(conn, selectors.EVENT_READ, ("worker", msg.job_id))
            if self.log is not None:
                self.log.trace.feed(msg)
        elif isinstance(msg, m.Redact):
            self.redactor.add(msg.values)
        elif isinstance(msg, m.MarkAbandoned):
            if self.log is not None:
                mark_abandoned(self.log.runtime, msg.run_id, msg.facts)
        elif isinstance(msg, m.Retain):
            if self.log is not None and self.retention is None:
                from loomrun.writer.retention import Retention  # here: not on the supervisor's start-up

                self.retention = Retention(self.log.runtime, msg.runs, msg.max_age_s)
                if self.retention.fd is not None:  # its child's reports come in with everything else
                    self.sel.register(self.retention.fd, selectors.EVENT_READ, ("retention", None))
        else:
            self._run_record(msg)

    def _run_record(self, msg: Any) -> None:
        log = self.log
        if log is None:
            raise ValueError(f"{type(msg).__name__} before RunStarted")
        if isinstance(msg, m.RunPhase):
            log.run_phase(msg)
        elif isinstance(msg, m.JobRoster):
            log.set_roster(msg)
        elif isinstance(msg, m.JobEnded):
            try:
                self._drain_job(msg.job_id)  # with --stream, its last lines reach the terminal here
                log.job_ended(msg)
            finally:  # answered even when writing failed: the supervisor waits for it to print the end line
                if msg.answer and not msg.replay:
                    self._send(m.JobWritten(msg.job_id, log.redact(msg.message), log.failing_tail(msg)))
        elif isinstance(msg, m.RunEnded):
            for job_id in list(self.workers):
                self._drain_job(job_id)
            msg, warnings = self._retention_done(log, msg)
            self._send(m.RunWritten(str(log.run_ended(msg)), warnings))
        else:
            raise ValueError(f"unknown record {type(msg).__name__}")
        log.trace.feed(msg)  # after a JobEnded's drain: the job's last records are in

    def _from_retention(self) -> None:
        retention = self.retention
        assert retention is not None and retention.fd is not None
        if not retention.read():  # its child is done
            self.sel.unregister(retention.fd)
            retention.close()

    def _finish_retention(self) -> None:
        if self.retention is not None:
            if self.retention.fd is not None:
                self.sel.unregister(self.retention.fd)
            self.retention.finish()

    def _retention_done(self, log: RunLog, msg: m.RunEnded) -> tuple[m.RunEnded, tuple[str, ...]]:
        """The run is over: retention gets its grace and stops, and what it could not remove goes
        into the run's events, its receipt (`retention` block) and a warning for the terminal."""
        if self.retention is None:
            return msg, ()
        self._finish_retention()
        block, warning = self.retention.report()
        for failure in block["failed"]:
            emit(log.events, time.time_ns(), "error", "run", "run.finalize", code="LOOM_RETENTION_FAILED",
                 message=f"retention could not remove {failure['path']}: {failure['error']}")
        return msg._replace(receipt={**msg.receipt, "retention": block}), (warning,) if warning else ()

    # -- worker records ------------------------------------------------------------------------
    def _from_worker(self, job_id: str) -> None:
        conn = self.workers.get(job_id)
        if conn is None:  # drained and closed earlier in this same select round
            return
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            self._close_worker(job_id)
            return
        self.handle_worker(conn, msg)

    def _close_worker(self, job_id: str) -> None:
        conn = self.workers.pop(job_id, None)
        if conn is not None:
            self.sel.unregister(conn)
            conn.close()

    def handle_worker(self, conn: Connection, msg: Any) -> None:
        log = self.log
        if log is None:
            raise ValueError("worker record before RunStarted")
        if isinstance(msg, m.Records):
            for record in msg.records:
                try:
                    self.handle_worker(conn, record)
                except OSError:
                    raise
                except Exception as exc:  # one bad record: the others of the batch still count
                    self._bad_record(exc)
        elif isinstance(msg, m.StepStarted):
            with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
                out_fd, err_fd = reduction.recvfds(s, 2)
            step = log.step_started(msg)
            log.trace.feed(msg)
            for fd, name in ((out_fd, "stdout"), (err_fd, "stderr")):
                os.set_blocking(fd, False)
                self.streams[fd] = OutputStream(msg.job_id, step, name, fd)
                self.sel.register(fd, selectors.EVENT_READ, ("out", None))
        elif isinstance(msg, m.Redact):
            self.redactor.add(msg.values)
        else:
            handler = _WORKER_RECORDS.get(type(msg))
            if handler is None:
                raise ValueError(f"unknown worker record {type(msg).__name__}")
            handler(log, msg)
            log.trace.feed(msg)

    # -- step output ---------------------------------------------------------------------------
    def _output(self, fd: int) -> None:
        st = self.streams.get(fd)
        if st is None:
            return
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        if data:
            self._lines(st, data)
        else:
            self._close_stream(st)

    def _lines(self, st: OutputStream, data: bytes, redact: bool = True) -> None:
        if redact and self.redactor.active:  # on the bytes, before they are cut into lines or decoded
            data, st.held = self.redactor.split(st.held + data if st.held else data)
        buf = st.partial + data if st.partial else data
        if len(buf) > LINE_CHUNK and buf.find(b"\n", 0, LINE_CHUNK + 1) < 0:
            buf = self._pieces(st, buf)
        cut = buf.rfind(b"\n")
        if cut < 0:
            st.partial = buf
        else:
            st.partial = buf[cut + 1:]
            self._emit(st, buf[:cut])
            if len(st.partial) > LINE_CHUNK:  # redaction markers can make a read longer than it was
                st.partial = self._pieces(st, st.partial)

    def _pieces(self, st: OutputStream, buf: bytes) -> bytes:
        """Write the leading pieces of a line longer than LINE_CHUNK; returns the rest, whose
        first line (at least one byte of it) fits."""
        while len(buf) > LINE_CHUNK and buf.find(b"\n", 0, LINE_CHUNK + 1) < 0:
            cut = _char_start(buf, LINE_CHUNK)
            self._emit_piece(st, buf[:cut])
            buf = buf[cut:]
        return buf

    def _emit(self, st: OutputStream, block: bytes) -> None:
        assert self.log is not None
        text = block.decode("utf-8", "replace")  # kept whole: no str per line (events.emit_output)
        self.log.step_output(st.job_id, st.step, st.stream, text, time.time_ns())
        if self.log.start.stream:
            prefix = f"[{st.job_id}] "
            out = prefix + text.replace("\n", "\n" + prefix) + "\n"
            if st.continued:
                out = f"[{st.job_id}]+" + out[len(prefix) - 1:]
            with contextlib.suppress(OSError):
                _write_all(sys.stderr.fileno(), out.encode())
        if st.continued:
            st.continued = False

    def _emit_piece(self, st: OutputStream, piece: bytes) -> None:
        assert self.log is not None
        text = piece.decode("utf-8", "replace")
        self.log.step_piece(st.job_id, st.step, st.stream, text, time.time_ns())
        if self.log.start.stream:  # a piece is a line of its own on the terminal; `+` marks the rest
            with contextlib.suppress(OSError):
                _write_all(sys.stderr.fileno(), f"[{st.job_id}]{'+' if st.continued else ''} {text}\n".encode())
        st.continued = True

    def _close_stream(self, st: OutputStream) -> None:
        if st.held:
            self._lines(st, self.redactor.finish(st.held), redact=False)
            st.held = b""
        if st.partial:
            self._emit(st, st.partial)
            st.partial = b""
        self.sel.unregister(st.fd)
        os.close(st.fd)
        del self.streams[st.fd]
        assert self.log is not None
        self.log.stream_closed(st.job_id, st.step)

    def _drain_job(self, job_id: str) -> None:
        """Before a job's documents are final: every record its worker sent, every byte it printed."""
        conn = self.workers.get(job_id)
        while conn is not None and job_id in self.workers:
            try:
                if not conn.poll(0.05):
                    break
                msg = conn.recv()
            except (EOFError, OSError):
                self._close_worker(job_id)
                break
            self.handle_worker(conn, msg)
        for st in [s for s in self.streams.values() if s.job_id == job_id]:
            while st.fd in self.streams:
                try:
                    data = os.read(st.fd, READ_CHUNK)
                except BlockingIOError:  # a writer end is still open somewhere: stop waiting
                    self._close_stream(st)
                    break
                if data:
                    self._lines(st, data)
                else:
                    self._close_stream(st)


# Worker records the run log takes as they are, by type.
_WORKER_RECORDS: dict[type, Callable[[RunLog, Any], None]] = {
    m.StepFinished: RunLog.step_finished,
    m.PhaseMark: RunLog.phase,
    m.SectionBegan: RunLog.section_began,
    m.SectionLines: RunLog.section_lines,
    m.SectionEnded: RunLog.section_ended,
    m.ArtifactsStaged: RunLog.adopt_artifacts,
    m.JobPlaced: RunLog.job_placed,
}


def _char_start(data: bytes, at: int) -> int:
    """`at`, moved back to the first byte of the UTF-8 character it falls in (at most 3 bytes)."""
    for cut in range(at, max(at - 3, 1) - 1, -1):
        if data[cut] & 0xC0 != 0x80:
            return cut
    return at


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
