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
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing import Pipe, reduction
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, NamedTuple

from loomrun.protocol import messages as m
from loomrun.writer.events import emit
from loomrun.writer.runlog import RunLog, StepLog, mark_abandoned

if TYPE_CHECKING:
    from loomrun.writer.retention import RetentionThread

READ_CHUNK = 1 << 20
DRAIN_AFTER_EOF_S = 30.0


class OutputStream:
    __slots__ = ("fd", "job_id", "partial", "step", "stream")

    def __init__(self, job_id: str, step: StepLog, stream: str, fd: int) -> None:
        self.job_id = job_id
        self.step = step
        self.stream = stream
        self.fd = fd
        self.partial = b""


class WriterHandle(NamedTuple):
    """The supervisor's side of the writer process."""

    pid: int
    conn: Connection
    sentinel: int  # a pidfd: readable when the writer exits


def spawn() -> WriterHandle:
    parent, child = Pipe(duplex=True)
    pid = os.fork()
    if pid == 0:  # the writer
        code = 1
        try:
            parent.close()
            os.setpgid(0, 0)  # out of the terminal's foreground group: ^C never reaches it
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            keep = child.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, 65536)
            code = Writer(child).run()
        finally:
            os._exit(code)
    child.close()
    return WriterHandle(pid, parent, os.pidfd_open(pid))


class Writer:
    def __init__(self, sup: Connection) -> None:
        self.sup = sup
        self.sel = selectors.DefaultSelector()
        self.sel.register(sup, selectors.EVENT_READ, ("sup", None))
        self.log: RunLog | None = None
        self.workers: dict[str, Connection] = {}
        self.streams: dict[int, OutputStream] = {}
        self.redactions: list[tuple[str, str]] = []
        self.sup_open = True
        self.retention: RetentionThread | None = None

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        deadline: float | None = None
        while self.sup_open or self.workers or self.streams:
            if not self.sup_open:
                deadline = deadline or time.monotonic() + DRAIN_AFTER_EOF_S
                if time.monotonic() > deadline:
                    break
            due = self.log.docs.due_in() if self.log is not None else None
            for key, _ in self.sel.select(timeout=1.0 if due is None else min(1.0, due)):
                kind, arg = key.data
                try:
                    if kind == "sup":
                        self._from_supervisor()
                    elif kind == "worker":
                        self._from_worker(arg)
                    else:
                        self._output(key.fd)
                except OSError as exc:
                    self._report_os_error(exc)
                except Exception as exc:  # a bad record must not take the writer down
                    self._bad_record(exc)
            if self.log is not None and self.log.docs.due_in() == 0.0:
                self._flush()
        self._flush()
        if self.retention is not None:
            self.retention.finish()
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
        if self.sup_open:
            with contextlib.suppress(OSError):
                self.sup.send(msg)

    # -- supervisor records --------------------------------------------------------------------
    def _from_supervisor(self) -> None:
        try:
            msg = self.sup.recv()
        except (EOFError, OSError):
            self.sup_open = False
            self.sel.unregister(self.sup)
            return
        self.handle_supervisor(msg)

    def handle_supervisor(self, msg: Any) -> None:
        if isinstance(msg, m.RunStarted):
            self.log = RunLog(msg, self.redactions)
            self._send(m.WriterReady(str(self.log.logs_dir)))
        elif isinstance(msg, m.AttachWorker):
            with socket.fromfd(self.sup.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
                fd = reduction.recvfds(s, 1)[0]
            conn = Connection(fd)
            self.workers[msg.job_id] = conn
            self.sel.register(conn, selectors.EVENT_READ, ("worker", msg.job_id))
        elif isinstance(msg, m.Redact):
            self.redactions.extend(msg.values)
        elif isinstance(msg, m.MarkAbandoned):
            if self.log is not None:
                mark_abandoned(self.log.runtime, msg.run_id)
        elif isinstance(msg, m.Retain):
            if self.log is not None and self.retention is None:
                from loomrun.writer.retention import RetentionThread  # here: not on the supervisor's start-up

                self.retention = RetentionThread(self.log.runtime, msg.runs, msg.max_age_s)
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
            self._drain_job(msg.job_id)
            log.job_ended(msg)
        elif isinstance(msg, m.RunEnded):
            for job_id in list(self.workers):
                self._drain_job(job_id)
            self._send(m.RunWritten(str(log.run_ended(msg))))
        else:
            raise ValueError(f"unknown record {type(msg).__name__}")

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
            for fd, name in ((out_fd, "stdout"), (err_fd, "stderr")):
                os.set_blocking(fd, False)
                self.streams[fd] = OutputStream(msg.job_id, step, name, fd)
                self.sel.register(fd, selectors.EVENT_READ, ("out", None))
        elif isinstance(msg, m.Redact):
            self.redactions.extend(msg.values)
        else:
            handler = _WORKER_RECORDS.get(type(msg))
            if handler is None:
                raise ValueError(f"unknown worker record {type(msg).__name__}")
            handler(log, msg)

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

    def _lines(self, st: OutputStream, data: bytes) -> None:
        buf = st.partial + data
        cut = buf.rfind(b"\n")
        if cut < 0:
            st.partial = buf
            return
        st.partial = buf[cut + 1:]
        self._emit(st, buf[:cut])

    def _emit(self, st: OutputStream, block: bytes) -> None:
        assert self.log is not None
        text = block.decode("utf-8", "replace")
        if self.redactions:
            text = self.log.redact(text)
        lines = text.split("\n")
        self.log.step_output(st.job_id, st.step, st.stream, lines, time.time_ns())
        if self.log.start.stream:
            prefix = f"[{st.job_id}] "
            out = "".join(f"{prefix}{line}\n" for line in lines).encode()
            with contextlib.suppress(OSError):
                _write_all(sys.stderr.fileno(), out)

    def _close_stream(self, st: OutputStream) -> None:
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
}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
