"""How a worker reports: phases and sections to the writer, progress to the supervisor. Worker process."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

from loomrun.protocol import messages as m
from workers.providers.base import ProviderError


class SectionFailed(Exception):
    """A system section failed in a way that fails the job (with `failure_kind`)."""

    def __init__(self, message: str, failure_kind: str, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.failure_kind = failure_kind
        self.code = code


class OpenSection:
    __slots__ = ("details", "job_id", "name", "rep", "status")

    def __init__(self, job_id: str, name: str, rep: Reporter) -> None:
        self.job_id = job_id
        self.name = name
        self.rep = rep
        self.details: dict[str, Any] = {}
        self.status = "success"

    def line(self, text: str, stream: str = "stdout") -> None:
        self.rep.record(m.SectionLines(self.job_id, self.name, (text,), stream, time.time_ns()))

    def warn(self, text: str) -> None:
        """`warning: <text>` in this section's events (stderr) and on the terminal."""
        self.line(f"warning: {text}", "stderr")
        self.rep.warn(text)


class PhaseState:
    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = "success"


class Reporter:
    """Implements `workers.providers.base.Sections`; owns the worker's two connections.

    Records for the writer are held and sent together (`m.Records`) before anything that may block:
    a section's body (an image pull, a cache restore), a step, the end of the job, and whenever the
    oldest held record is `HOLD_S` old; a record that must go at once (`send_now`) closes the batch.
    A job that only runs `true` sends the writer 4 messages instead of 15 (one per record). What a
    worker killed mid-step had said is therefore always with the writer."""

    HOLD_S = 0.05

    def __init__(self, job_id: str, writer: Connection, supervisor: Connection) -> None:
        self.job_id = job_id
        self.writer = writer
        self.supervisor = supervisor
        self.current_section: str | None = None
        self._held: list[Any] = []
        self._since = 0.0
        # A peer that died does not end the job here: its records have no reader (the supervisor
        # cancels the job when its writer dies; the worker stops the job when its supervisor is gone).
        self.writer_lost = False

    def record(self, msg: Any) -> None:
        if not self._held:
            self._since = time.monotonic()
        self._held.append(msg)
        if time.monotonic() - self._since >= self.HOLD_S:
            self.flush()

    def flush(self) -> None:
        if self._held:
            held, self._held = self._held, []
            self.to_writer(held[0] if len(held) == 1 else m.Records(tuple(held)))

    def to_writer(self, msg: Any, fds: tuple[int, ...] = ()) -> None:
        if self.writer_lost:
            return
        try:
            self.writer.send(msg)
            if fds:
                with socket.fromfd(self.writer.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    reduction.sendfds(s, list(fds))
        except OSError:
            self.writer_lost = True

    def _tell(self, msg: Any) -> None:
        try:
            self.supervisor.send(msg)
        except OSError:
            pass  # EOF on the supervisor's pipe says it too: the job is being stopped

    def send_now(self, msg: Any) -> None:
        """`msg` after everything held, in the same message, sent at once."""
        self._held.append(msg)
        self.flush()

    @contextmanager
    def section(self, name: str) -> Iterator[OpenSection]:
        sec = OpenSection(self.job_id, name, self)
        self.current_section = name
        self.send_now(m.SectionBegan(self.job_id, name, time.time_ns()))
        try:
            yield sec
        except BaseException as exc:
            code, message = _error_of(exc)
            self.record(m.SectionEnded(self.job_id, name, "failed", time.time_ns(), code, message, sec.details))
            raise
        finally:
            self.current_section = None
        self.record(m.SectionEnded(self.job_id, name, sec.status, time.time_ns(), details=sec.details))

    @contextmanager
    def phase(self, code: str) -> Iterator[PhaseState]:
        """A job phase; it finishes `failed` when an exception escapes or the block says so."""
        state = PhaseState()
        self.record(m.PhaseMark(self.job_id, code, time.time_ns()))
        try:
            yield state
        except BaseException:
            self.record(m.PhaseMark(self.job_id, code, time.time_ns(), "failed"))
            raise
        self.record(m.PhaseMark(self.job_id, code, time.time_ns(), state.status))

    def step_started(self, index: int, command: str, out_fd: int, err_fd: int) -> None:
        self._held.append(m.StepStarted(self.job_id, index, command, time.time_ns()))  # the fds follow it
        held, self._held = self._held, []
        self.to_writer(held[0] if len(held) == 1 else m.Records(tuple(held)), (out_fd, err_fd))
        self._tell(m.StepBegan(self.job_id, index))

    def step_finished(self, index: int, exit_code: int, duration_ms: int) -> None:
        self.record(m.StepFinished(self.job_id, index, exit_code, duration_ms, time.time_ns()))
        self._tell(m.StepEnded(self.job_id, index, exit_code))

    def notice(self, text: str) -> None:
        self._tell(m.Notice(self.job_id, text))

    def warn(self, text: str) -> None:
        """A warning line for the terminal (the caller writes it into its section's events)."""
        self._tell(m.Warned(self.job_id, text))


def _error_of(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, SectionFailed):  # the code goes in its own field, not twice in the event
        return exc.code, exc.message.removeprefix(f"{exc.code}: ") if exc.code else exc.message
    if isinstance(exc, ProviderError):
        return "LOOM_PROVIDER_ERROR", exc.message
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return "LOOM_OS_ERROR", f"{exc.strerror or exc}{where}"
    return "LOOM_ERROR", f"{type(exc).__name__}: {exc}"
