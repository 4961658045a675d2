"""The supervisor's event loop: one `wait()` on every worker pipe, every worker sentinel, the
writer's pipe and sentinel, and the signal wake-up pipe, with the next deadline as its timeout.

Runs in the `loom` process. Signal handlers only record (the wake-up fd carries the signal number);
this loop acts on them where logging and cleanup are safe. A dead worker is seen the moment it dies;
the supervisor then knows which job and step were in flight and reports them, sweeps anything the
job left behind, and carries on with the other jobs.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, NamedTuple

from loomrun.forkserver.process import ForkServer
from loomrun.proctree import JobCgroup, describe_status, stop_processes, tagged
from loomrun.protocol import messages as m
from loomrun.protocol.spec import WorkerSpec
from loomrun.supervisor.scheduler import Scheduler
from loomrun.supervisor.slots import JobSlot, start_worker
from loomrun.supervisor.terminal import Terminal
from loomrun.workflow.model import Job
from loomrun.writer.process import WriterHandle

if TYPE_CHECKING:
    from loomrun.supervisor.jobserver import Pool

STOP_SLACK_S = 10.0  # how long past its grace a stopping worker may take before it is SIGKILLed


class Outcome(NamedTuple):
    name: str
    status: str
    exit_code: int | None
    failure_kind: str | None
    message: str
    seconds: float | None
    cache_hits: tuple[str, ...]
    outputs: dict[str, str]


class WriterLost(Exception):
    pass


def uses_jobserver(job: Job, env: dict[str, str]) -> bool:
    """A host or Docker job draws from the jobserver unless its variables say LOOM_JOBSERVER: off."""
    return job.provider in ("host", "docker") and env.get("LOOM_JOBSERVER", "on") != "off"


class Supervisor:
    def __init__(self, *, jobs: list[Job], deps: dict[str, tuple[str, ...]], max_jobs: int,
                 writer: WriterHandle, terminal: Terminal, make_spec: Callable[[Job], WorkerSpec],
                 run_id: str, grace_s: float, wakeup_fd: int, forks: ForkServer | None = None,
                 pool: Pool | None = None) -> None:
        self.jobs = {j.name: j for j in jobs}
        self.sched = Scheduler(jobs, deps, max_jobs)
        self.writer = writer
        self.term = terminal
        self.make_spec = make_spec
        self.run_id = run_id
        self.grace_s = grace_s
        self.wakeup_fd = wakeup_fd
        self.slots: dict[str, JobSlot] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.interrupted: int | None = None  # the first SIGINT/SIGTERM
        self.hurry = False  # a second signal: no more grace
        self.writer_error: str | None = None
        self.finish_order: list[str] = []
        self.ended: list[m.JobEnded] = []  # everything told to the writer, for a writer that takes over
        self.exiting: dict[int, JobSlot] = {}  # sentinel -> worker that reported and is exiting
        self.forks = forks  # started early by `loom run`; else this supervisor starts (and ends) its own
        self.pool = pool  # the jobserver: a slot for each job, shared with the jobs' makes (None: off)

    # -- the loop ----------------------------------------------------------------------------
    def execute(self) -> None:
        if self.forks is not None:
            self._execute(self.forks)
            return
        try:
            own = ForkServer(preload_docker=any(j.provider == "docker" for j in self.jobs.values()))
        except OSError as exc:  # no process to fork workers with: every job fails, with the reason
            why = f"worker could not start: cannot start the fork server: {exc.strerror or exc}"
            for name in self.sched.cancel_pending():
                self._record(name, "failed", None, m.WORKER_CRASHED, why, None, started_ns=None)
            return
        try:
            self._execute(own)
        finally:
            own.close()

    def _execute(self, forks: ForkServer) -> None:
        while not self.sched.done() or self.slots:
            for name in self._startable():
                self._start(name, forks)
            if self.sched.done() and not self.slots:
                break
            if self.pool is not None:
                self.pool.rebalance()
            self._wait_once()
        self._reap_exiting()

    def _startable(self) -> list[str]:
        """Ready jobs that may start now: within --jobs, and each with a slot from the jobserver."""
        going = self.interrupted is None and self.writer_error is None
        if self.pool is None:
            return self.sched.take_ready() if going else []
        want = self.sched.startable() if going else 0
        granted = self.pool.grant(want)  # grant(0) also tells the pool nothing waits any more
        return self.sched.take_ready(granted) if granted else []

    def _wait_once(self) -> None:
        objs: list[Any] = [self.wakeup_fd, self.writer.conn, self.writer.sentinel, *self.exiting]
        if self.pool is not None:  # the next turn's rebalance or grant acts on what is readable
            objs.extend(self.pool.wait_fds())
        for slot in self.slots.values():
            objs.append(slot.sentinel)
            if slot.conn is not None:
                objs.append(slot.conn)
        ready = wait(objs, timeout=self._timeout())
        for sentinel in [s for s in self.exiting if s in ready]:
            self._collect(self.exiting.pop(sentinel))
        if self.wakeup_fd in ready:
            self._signals()
        if self.writer.conn in ready:
            self._from_writer()
        if self.writer.sentinel in ready:
            raise WriterLost(self._writer_death())
        for slot in list(self.slots.values()):
            if slot.conn is not None and slot.conn in ready:
                self._read_worker(slot)
                if self._reported(slot) and slot.sentinel not in ready:
                    # The job is over and its worker closed its writer socket first: the slot frees
                    # now, while the process finishes exiting (its teardown is off the critical path).
                    self._complete(slot, 0)
                    self.exiting[slot.sentinel] = slot
                    continue
            if slot.sentinel in ready:
                self._reap(slot)
        self._deadlines()

    @staticmethod
    def _reported(slot: JobSlot) -> bool:
        # A worker error reported as data waits for the exit status, which its message names.
        return slot.result is not None and slot.result.failure_kind != m.WORKER_CRASHED

    def _collect(self, slot: JobSlot) -> None:
        try:
            os.waitpid(slot.pid, 0)
        except ChildProcessError:
            pass
        os.close(slot.sentinel)

    def _reap_exiting(self, timeout_s: float = 10.0) -> None:
        """Every worker that already reported is reaped before the run ends (killed if it lingers)."""
        deadline = time.monotonic() + timeout_s
        while self.exiting:
            ready = wait(list(self.exiting), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for slot in self.exiting.values():
                    slot.kill()
                deadline = time.monotonic() + timeout_s
                continue
            for sentinel in [s for s in self.exiting if s in ready]:
                self._collect(self.exiting.pop(sentinel))

    def _timeout(self) -> float | None:
        now = time.monotonic()
        marks = [t for s in self.slots.values() for t in (s.deadline, s.kill_at) if t is not None]
        tick = self.pool.timeout() if self.pool is not None else None
        if tick is not None:
            marks.append(now + tick)
        return max(0.0, min(marks) - now) if marks else None

    # -- starting --------------------------------------------------------------------------------
    def _start(self, name: str, forks: ForkServer) -> None:
        job = self.jobs[name]
        spec = self.make_spec(job)
        if self.pool is not None:
            fifo = self.pool.job_started(name, uses_jobserver(job, spec.env))
            if fifo:
                spec = spec._replace(jobserver=fifo, jobserver_slots=self.pool.slots)
        self.term.job_started(name, job.provider, job.image.name if job.image else None)
        try:
            slot = start_worker(spec, self.writer, forks, job.timeout_s)
        except OSError as exc:  # no worker process (fork refused twice): the job fails, the run goes on
            if self.pool is not None:
                self.pool.job_ended(name, clean=True)
            self._record(name, "failed", None, m.WORKER_CRASHED, f"worker could not start: {exc}", None,
                         started_ns=time.time_ns())
            return
        self.slots[name] = slot

    # -- messages ---------------------------------------------------------------------------
    def _read_worker(self, slot: JobSlot) -> None:
        assert slot.conn is not None
        try:
            while slot.conn.poll():
                msg = slot.conn.recv()
                if isinstance(msg, m.StepBegan):
                    slot.step = msg.step
                elif isinstance(msg, m.StepEnded):
                    slot.step = None
                elif isinstance(msg, m.Notice):
                    self.term.detail(f'job "{slot.name}": {msg.text}')
                elif isinstance(msg, m.Warned):
                    self.term.event(f'warning: job "{slot.name}": {msg.text}')
                elif isinstance(msg, m.JobFinished):
                    slot.result = msg
        except (EOFError, OSError):
            slot.conn.close()
            slot.conn = None

    def _from_writer(self) -> None:
        try:
            while self.writer.conn.poll():
                msg = self.writer.conn.recv()
                if isinstance(msg, m.WriterFailed) and self.writer_error is None:
                    self.writer_error = msg.message
                    self._cancel_all(m.CANCELED, f"cannot write logs: {msg.message}")
        except (EOFError, OSError):
            pass  # the sentinel reports the writer's death

    def _writer_death(self) -> str:
        try:
            _, status = os.waitpid(self.writer.pid, 0)
            how = describe_status(status)
        except ChildProcessError:
            how = "unknown status"
        return f"writer process died ({how})"

    # -- signals and deadlines ------------------------------------------------------------------
    def _signals(self) -> None:
        try:
            data = os.read(self.wakeup_fd, 64)
        except BlockingIOError:
            return
        for signum in data:
            if signum not in (signal.SIGINT, signal.SIGTERM):
                continue
            if self.interrupted is None:
                self.interrupted = signum
                self.term.event(f"loom run: {signal.Signals(signum).name} received; canceling "
                                f"(again to skip the {self.grace_s:g}s grace period)")
                self._cancel_all(m.CANCELED, f"interrupted by {signal.Signals(signum).name}")
            elif not self.hurry:
                self.hurry = True
                for slot in self.slots.values():
                    slot.send(m.Cancel(m.CANCELED, 0.0, slot.stop_reason))
                    slot.kill_at = time.monotonic() + STOP_SLACK_S

    def _cancel_all(self, kind: str, reason: str) -> None:
        for name in self.sched.cancel_pending():
            self._record(name, "canceled", None, m.CANCELED, reason, None, started_ns=None)
        for slot in self.slots.values():
            self._stop(slot, kind, reason)

    def _stop(self, slot: JobSlot, kind: str, reason: str) -> None:
        if slot.state != "running":
            return
        slot.transition("stopping")
        slot.stop_kind, slot.stop_reason = kind, reason
        grace = 0.0 if self.hurry else self.grace_s
        slot.send(m.Cancel(kind, grace, reason))
        slot.deadline = None
        slot.kill_at = time.monotonic() + grace + STOP_SLACK_S

    def _deadlines(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots.values()):
            if slot.deadline is not None and now >= slot.deadline:
                timeout = self.jobs[slot.name].timeout_s
                self._stop(slot, m.TIMEOUT, f"timeout after {timeout:g}s")
            elif slot.kill_at is not None and now >= slot.kill_at and slot.state == "stopping":
                slot.transition("killing")
                slot.kill()  # the worker did not finish stopping: the sentinel fires next
                slot.kill_at = None

    # -- a worker ended ---------------------------------------------------------------------------
    def _reap(self, slot: JobSlot) -> None:
        if slot.conn is not None:
            self._read_worker(slot)  # whatever it said before dying
        try:
            _, status = os.waitpid(slot.pid, 0)
        except ChildProcessError:
            status = 0
        os.close(slot.sentinel)
        slot.exit_status = status
        self._complete(slot, status)

    def _complete(self, slot: JobSlot, status: int) -> None:
        self._sweep(slot)
        slot.transition("ended")
        del self.slots[slot.name]
        if self.pool is not None:  # every process of the job is gone: its slot, and its makes', come back
            self.pool.job_ended(slot.name, self._ended_cleanly(slot))
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        self._finish(slot, status)

    @staticmethod
    def _ended_cleanly(slot: JobSlot) -> bool:
        """The job's processes ended on their own, so its makes gave back every token they took.
        Not so for a job loom stopped, a crashed worker, a breached limit or a step a signal ended."""
        res = slot.result
        if res is None or slot.stop_kind is not None:
            return False
        return res.status == "success" or (res.failure_kind == m.STEP_FAILED and res.exit_code is not None
                                           and res.exit_code < 128)

    def _sweep(self, slot: JobSlot) -> None:
        """Whatever the worker left (it crashed or was killed): its cgroup, then tagged processes."""
        cgroup = JobCgroup(f"{self.run_id}.{slot.name}")
        cgroup.attach_existing()
        if cgroup.dirs or slot.result is None:
            def find() -> list[Any]:
                procs = {p.pid: p for p in cgroup.processes()}
                procs.update((p.pid, p) for p in tagged(self.run_id, slot.name))
                return list(procs.values())

            slot.sweep = stop_processes(find, 0.0 if slot.result is None else self.grace_s)
            cgroup.remove()
        if slot.result is None and self.jobs[slot.name].provider == "docker":
            from loomrun.supervisor import janitor

            run_id, job_id = self.run_id, slot.name
            done = janitor.spawn("docker job", lambda: janitor.docker_reap_run(run_id, job_id)).wait(60.0)
            slot.sweep += "; containers removed" if done else "; container removal timed out"

    def _finish(self, slot: JobSlot, status: int) -> None:
        res = slot.result
        if res is not None and slot.stop_kind is None:
            st, code, kind, msg = res.status, res.exit_code, res.failure_kind, res.message
        elif slot.stop_kind is not None:
            st = "canceled" if slot.stop_kind == m.CANCELED else "failed"
            code = res.exit_code if res else None
            kind, msg = slot.stop_kind, slot.stop_reason
        else:
            st, code, kind = "failed", None, m.WORKER_CRASHED
            msg = f"worker crashed ({describe_status(status)})"
            if slot.step is not None:
                msg += f" during step {slot.step}"
        if res is not None and res.failure_kind == m.WORKER_CRASHED and slot.stop_kind is None:
            msg = f"{res.message} ({describe_status(status)})"
        self._record(slot.name, st, code, kind, msg, slot, started_ns=slot.started_ns,
                     resources=res.resources if res else {}, cache_hits=res.cache_hits if res else (),
                     outputs=res.outputs if res else {})

    def _record(self, name: str, status: str, code: int | None, kind: str | None, message: str,
                slot: JobSlot | None, *, started_ns: int | None, resources: dict[str, Any] | None = None,
                cache_hits: tuple[str, ...] = (), outputs: dict[str, str] | None = None) -> None:
        job = self.jobs[name]
        now = time.time_ns()
        seconds = (now - started_ns) / 1e9 if started_ns else None
        ended = m.JobEnded(
            name, job.stage, status, code, kind, message, job.provider,
            job.image.name if job.image else None, started_ns, now, resources or {},
            job.allow_failure, slot.step if slot is not None else None, slot.sweep if slot is not None else "",
        )
        self.ended.append(ended)
        self.writer.conn.send(ended)
        self.outcomes[name] = Outcome(name, status, code, kind, message, seconds, cache_hits, outputs or {})
        if status in ("failed", "canceled"):
            self.finish_order.append(name)
        self.term.job_ended(name, status, seconds, self._why(job, status, code, kind, message))
        if self.sched.state[name] == "running":  # not for a job settled before it started (skipped, canceled)
            for skipped, reason in self.sched.finish(name, status):
                self._record(skipped, "skipped", None, m.DEPENDENCY_FAILED, reason, None, started_ns=None)

    @staticmethod
    def _why(job: Job, status: str, code: int | None, kind: str | None, message: str) -> str:
        if status == "success":
            return ""
        if status == "skipped":
            return message
        why = f"exit code {code}" if kind == m.STEP_FAILED else (message or kind or "")
        if kind not in (m.STEP_FAILED, None) and message and kind not in message:
            why = f"{kind}: {message}"
        if status == "failed" and job.allow_failure:
            why += ", allowed to fail"
        return why
