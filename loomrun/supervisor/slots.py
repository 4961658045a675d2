"""A running job as the supervisor sees it: its worker process and a small state machine.

Runs in the supervisor. `start_worker` forks the worker (cheap: the supervisor is single-threaded
and the worker code is already imported), hands the writer its end of the job's socket, and closes
every end the supervisor does not use, so EOF means what it says.
"""

from __future__ import annotations

import os
import signal
import time
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from loomrun.forkserver.process import ForkServer
from loomrun.protocol import messages as m
from loomrun.protocol.spec import WorkerSpec
from loomrun.supervisor.writerlink import WriterLink

if TYPE_CHECKING:
    from loomrun.supervisor.secrets_broker import SecretsBroker

# Allowed transitions of the job lifecycle (supervisord-style): state -> states it may go to.
TRANSITIONS = {
    "running": {"stopping", "ended"},
    "stopping": {"killing", "ended"},
    "killing": {"ended"},
    "ended": set(),
}


class BadTransition(RuntimeError):
    pass


class JobSlot:
    """A running worker as the supervisor sees it. (A plain class, not a dataclass: defining
    dataclasses cost ~0.7 ms each at every start of `loom`.)"""

    __slots__ = ("conn", "deadline", "exit_status", "kill_at", "name", "pid", "result", "sentinel", "started_mono",
                 "started_ns", "state", "step", "stop_kind", "stop_reason", "sweep", "tree_kill_at")

    def __init__(self, name: str, pid: int, conn: Connection | None, sentinel: int, started_ns: int,
                 started_mono: float) -> None:
        self.name = name
        self.pid = pid
        self.conn = conn
        self.sentinel = sentinel  # pidfd of the worker
        self.started_ns = started_ns
        self.started_mono = started_mono
        self.state = "running"
        self.step: int | None = None  # the step in flight, for a crash report
        self.result: m.JobFinished | None = None
        self.stop_kind: str | None = None  # timeout | canceled: the supervisor's reason for stopping it
        self.stop_reason = ""
        self.deadline: float | None = None  # monotonic: job timeout
        self.kill_at: float | None = None  # monotonic: worker did not finish stopping by then
        self.tree_kill_at: float | None = None  # monotonic: the supervisor KILLs the job's processes
        self.exit_status: int | None = None
        self.sweep = ""

    def transition(self, new: str) -> None:
        if new not in TRANSITIONS[self.state]:
            raise BadTransition(f"job {self.name}: {self.state} -> {new}")
        self.state = new

    def send(self, msg: object) -> None:
        if self.conn is not None:
            try:
                self.conn.send(msg)
            except OSError:
                pass  # the worker is gone; its sentinel will tell

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_worker(spec: WorkerSpec, writer: WriterLink, forks: ForkServer, timeout_s: float | None,
                 secrets: SecretsBroker | None = None) -> JobSlot:
    broker_end = secrets.attach(spec.job) if secrets is not None and spec.job.secrets else None
    sup_end, worker_end = Pipe(duplex=True)
    writer_end, worker_writer_end = Pipe(duplex=True)
    try:
        writer.attach(spec.job.name, writer_end.fileno())  # a writer that died meanwhile is replaced
    finally:
        writer_end.close()
    started_ns, started_mono = time.time_ns(), time.monotonic()
    fds = [worker_end.fileno(), worker_writer_end.fileno(), *([broker_end] if broker_end is not None else [])]
    try:
        pid = forks.spawn(spec, fds)
    finally:
        worker_end.close()
        worker_writer_end.close()
        if broker_end is not None:
            os.close(broker_end)
    slot = JobSlot(spec.job.name, pid, sup_end, os.pidfd_open(pid), started_ns, started_mono)
    if timeout_s is not None:
        slot.deadline = started_mono + timeout_s
    return slot
