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
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, NamedTuple

from loomrun.forkserver.process import ForkServer
from loomrun.proctree import (
    JobCgroup,
    TrackingCgroup,
    descends_from,
    describe_status,
    handles,
    job_tree,
    signal_tree,
    stop_processes,
    stopped,
    tagged,
)
from loomrun.protocol import messages as m
from loomrun.protocol.spec import WorkerSpec
from loomrun.supervisor.scheduler import Scheduler
from loomrun.supervisor.slots import JobSlot, start_worker
from loomrun.supervisor.terminal import Terminal
from loomrun.supervisor.writerlink import WriterLink
from loomrun.workflow.model import Job

if TYPE_CHECKING:
    from loomrun.supervisor.jobserver import Pool
    from loomrun.supervisor.secrets_broker import SecretsBroker

STOP_SLACK_S = 10.0  # how long past its grace a stopping worker may take before it is SIGKILLed
TREE_MARGIN_S = 0.5  # past a stop's grace: what the worker has not KILLed by then, the supervisor does
STOP_TICK_S = 0.1  # while a job stops: how often the supervisor looks whether its worker is stopped


class Outcome(NamedTuple):
    name: str
    status: str
    exit_code: int | None
    failure_kind: str | None
    message: str
    seconds: float | None
    cache_hits: tuple[str, ...]
    outputs: dict[str, str]


class EndLine:
    """A job's passed/failed/... line, held until the writer answers `JobWritten` for the job: by
    then its output is on the terminal (--stream) and in its events, so the line follows it."""

    __slots__ = ("code", "kind", "message", "name", "seconds", "status", "tail")

    def __init__(self, name: str, status: str, code: int | None, kind: str | None, message: str,
                 seconds: float | None) -> None:
        self.name, self.status, self.code, self.kind = name, status, code, kind
        self.message, self.seconds = message, seconds
        self.tail: Sequence[str] = ()


def uses_jobserver(job: Job, env: dict[str, str]) -> bool:
    """A host or Docker job draws from the jobserver unless its variables say LOOM_JOBSERVER: off."""
    return job.provider in ("host", "docker") and env.get("LOOM_JOBSERVER", "on") != "off"


class Supervisor:
    def __init__(self, *, jobs: list[Job], deps: dict[str, tuple[str, ...]], max_jobs: int,
                 writer: WriterLink, terminal: Terminal, make_spec: Callable[[Job], WorkerSpec],
                 run_id: str, grace_s: float, wakeup_fd: int, forks: ForkServer | None = None,
                 note: Callable[[list[str]], None] | None = None, secrets: SecretsBroker | None = None,
                 stream: bool = False, quiet: bool = False, pool: Pool | None = None) -> None:
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
        self.writer_deaths = len(writer.deaths)  # deaths already acted on (canceled the run)
        self.finish_order: list[str] = []
        self.ended: list[m.JobEnded] = []  # every job's end, in order: the summary table's rows
        self.exiting: dict[int, JobSlot] = {}  # sentinel -> worker that reported and is exiting
        self.forks = forks  # started early by `loom run`; else this supervisor starts (and ends) its own
        self.secrets = secrets  # the run's secrets broker (started at the first job with a vault ref)
        # Every worker is born in the run's tracking cgroup (the fork server is moved into it), so a
        # crashed worker's leftovers are found there, even a step that left its session and cleared
        # its environment: one migration per run (~0.2 ms), where one per job cost ~0.3 ms each.
        self.run_cgroups: list[TrackingCgroup] = []  # one per fork server (a replaced one makes another)
        self.tracked_pid: int | None = None  # the fork server whose cgroup was last looked up
        self.note = note  # told the cgroup's path, for the recovery of a run whose supervisor died
        # Terminal lines in the order they were decided, held behind an end line whose job the writer
        # has not written yet (so the plain lines read as before: started, passed, started, ...).
        self.said: deque[EndLine | Callable[[], None]] = deque()
        self.unwritten: dict[str, EndLine] = {}
        # Which end lines wait for the writer: with --stream every one (the job's lines come first),
        # else a failed one (its last lines come with the answer); with -q none is printed. A wait
        # costs the supervisor ~0.2 ms per job (one more turn of its loop).
        self.stream, self.quiet = stream, quiet
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
            self._await_written()
            return
        try:
            self._execute(own)
        finally:
            own.close()

    def _execute(self, forks: ForkServer) -> None:
        try:
            self._loop(forks)
        finally:
            self._untrack_run()

    def _loop(self, forks: ForkServer) -> None:
        self.term.plan(len(self.jobs))
        while not self.sched.done() or self.slots:
            self._writer_check()
            self._start_ready(forks)
            if self.sched.done() and not self.slots:
                break
            if self.pool is not None:
                self.pool.rebalance()
            self._wait_once()
        self._await_written()
        self._reap_exiting()

    def _stopping(self) -> str | None:
        """Why no job may start any more (an interrupt, a writer that failed or died), or None."""
        if self.interrupted is not None:
            return f"interrupted by {signal.Signals(self.interrupted).name}"
        if self.writer_error is not None:
            return f"cannot write logs: {self.writer_error}"
        if self.writer.deaths:
            return self.writer.deaths[0]
        return None

    def _writer_check(self, dead: bool = False) -> None:
        """A writer that died since the last look: `dead` (its pidfd fired: the link takes over now),
        or a send found it gone and the link took over then. The run fails, so every running job is
        canceled; the new writer records it all."""
        if dead:
            self._release_all()  # the dead writer answers no more; its successor never answers replays
            self.writer.take_over()
        if len(self.writer.deaths) > self.writer_deaths:
            self.writer_deaths = len(self.writer.deaths)
            self._release_all()  # what the dead writer did not answer, it never will
            self._cancel_all(m.CANCELED, self.writer.deaths[-1])

    def _startable(self) -> list[str]:
        """Ready jobs that may start now: within --jobs, and each with a slot from the jobserver.
        While the run is being stopped, a job that became ready is canceled instead: it never starts."""
        why = self._stopping()
        if why is not None:
            if self.pool is not None:
                self.pool.grant(0)  # tells the pool nothing waits any more
            for name in self.sched.take_ready():
                self._record(name, "canceled", None, m.CANCELED, why, None, started_ns=None)
            return []
        if self.pool is None:
            return self.sched.take_ready()
        granted = self.pool.grant(self.sched.startable())
        return self.sched.take_ready(granted) if granted else []

    def _start_ready(self, forks: ForkServer) -> None:
        """Start every job that may start now. A start that fails (no worker process) frees its slot
        and can make a job ready (a dependent of a job with allow_failure) while nothing runs that
        would wake the loop (with -q, not even a redraw): then ask again, until no start fails."""
        names = self._startable()
        while names:
            failed = False
            for name in names:
                failed |= not self._start(name, forks)
                self._writer_check()
            names = self._startable() if failed else []

    def _wait_once(self) -> None:
        objs: list[Any] = [self.wakeup_fd, *self.writer.waitables(), *self.exiting]
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
        self._writer_check(self.writer.sentinel in ready and self.writer.dead())
        for slot in list(self.slots.values()):
            if slot.conn is not None and slot.conn in ready:
                self._read_worker(slot)
                if self._reported(slot) and slot.sentinel not in ready:
                    # The job is over and its worker closed its writer socket first: the slot frees
                    # now, while the process finishes exiting (its teardown is off the critical path).
                    self._complete(slot, 0, exited=False)
                    self.exiting[slot.sentinel] = slot
                    continue
            if slot.sentinel in ready:
                self._reap(slot)
        self._deadlines()
        self.term.tick()

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
        if not self.jobs[slot.name].limits.empty:
            self._untrack(slot)

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
        marks = [t for s in self.slots.values() for t in (s.deadline, s.kill_at, s.tree_kill_at) if t is not None]
        if any(s.state == "stopping" for s in self.slots.values()):
            marks.append(now + STOP_TICK_S)
        tick = self.pool.timeout() if self.pool is not None else None
        if tick is not None:
            marks.append(now + tick)
        wait = max(0.0, min(marks) - now) if marks else None
        redraw = self.term.wake_in()  # the live region's next frame, if it has one
        return redraw if redraw is not None and (wait is None or redraw < wait) else wait

    # -- starting --------------------------------------------------------------------------------
    def _start(self, name: str, forks: ForkServer) -> bool:
        """Start `name`'s worker; False when there is none (its job is recorded as failed)."""
        job = self.jobs[name]
        spec = self.make_spec(job)
        if self.pool is not None:
            fifo = self.pool.job_started(name, uses_jobserver(job, spec.env))
            if fifo:
                spec = spec._replace(jobserver=fifo, jobserver_slots=self.pool.slots)
        self._say(self.term.job_started, name, job.provider, job.image.name if job.image else None,
                  steps=len(job.script))
        try:
            slot = start_worker(spec, self.writer, forks, job.timeout_s, self.secrets)
        except OSError as exc:  # no worker process (fork refused twice): the job fails, the run goes on
            if self.pool is not None:
                self.pool.job_ended(name, clean=True)
            self._record(name, "failed", None, m.WORKER_CRASHED, f"worker could not start: {exc}", None,
                         started_ns=time.time_ns())
            return False
        if self.tracked_pid != forks.pid:  # the first spawn, or the fork server was replaced during it
            self._track(forks)
        self.slots[name] = slot
        return True

    # -- messages ---------------------------------------------------------------------------
    def _read_worker(self, slot: JobSlot) -> None:
        assert slot.conn is not None
        try:
            while slot.conn.poll():
                msg = slot.conn.recv()
                if isinstance(msg, m.StepBegan):
                    slot.step = msg.step
                    self.term.step(slot.name, msg.step)
                elif isinstance(msg, m.StepEnded):
                    slot.step = None
                elif isinstance(msg, m.Notice):
                    self._say(self.term.detail, f'job "{slot.name}": {msg.text}')
                elif isinstance(msg, m.Warned):
                    self._say(self.term.warning, f'job "{slot.name}": {msg.text}')
                elif isinstance(msg, m.JobFinished):
                    slot.result = msg
        except (EOFError, OSError):
            slot.conn.close()
            slot.conn = None

    def _from_writer(self) -> None:
        for msg in self.writer.pending():
            if isinstance(msg, m.JobWritten):
                self._written(msg)
            elif isinstance(msg, m.WriterFailed) and self.writer_error is None:
                self.writer_error = msg.message
                self._cancel_all(m.CANCELED, f"cannot write logs: {msg.message}")

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
                    if slot.state == "stopping":
                        slot.tree_kill_at = time.monotonic()  # no more grace for the job's processes

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
        now = time.monotonic()
        slot.kill_at = now + grace + STOP_SLACK_S
        # The job's processes get their TERM from here as well, on time whatever the worker's state
        # (a stopped or hung worker would never send it; the worker's own TERM after it is harmless).
        # Past the grace (and a margin for the worker's own KILL), the supervisor KILLs what is left.
        n = signal_tree(self._tree(slot), signal.SIGTERM, spare=slot.pid)  # the worker leads its own group
        slot.tree_kill_at = now + grace + (TREE_MARGIN_S if grace else 0.0)
        slot.sweep = f"TERM {n} from the supervisor at the {kind}"

    def _tree(self, slot: JobSlot) -> list[Any]:
        """The job's processes while its worker lives: the worker's descendants and its cgroups."""
        cgroup = JobCgroup(f"{self.run_id}.{slot.name}")
        cgroup.attach_existing()
        return job_tree(slot.pid, cgroup)

    def _deadlines(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots.values()):
            if slot.deadline is not None and now >= slot.deadline:
                timeout = self.jobs[slot.name].timeout_s
                self._stop(slot, m.TIMEOUT, f"timeout after {timeout:g}s")
            elif slot.state == "stopping":
                self._enforce(slot, now)

    def _enforce(self, slot: JobSlot, now: float) -> None:
        """A stop the supervisor enforces without the worker's help: TERM was sent at the stop;
        once the grace is over, KILL whatever of the job is left; then a stopped worker (it will
        never report) is killed at once, a running one that did not finish stopping at `kill_at`."""
        frozen = stopped(slot.pid)
        if slot.tree_kill_at is not None and (now >= slot.tree_kill_at or (frozen and not self._tree(slot))):
            slot.tree_kill_at = None
            killed = stop_processes(lambda: self._tree(slot), 0.0)
            if killed != "nothing to stop":
                slot.sweep += f"; after the grace: {killed}"
        if (frozen and slot.tree_kill_at is None) or (slot.kill_at is not None and now >= slot.kill_at):
            slot.transition("killing")
            slot.kill()  # the sentinel fires next; the sweep then takes what the worker left
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
        self._complete(slot, status, exited=True)

    def _complete(self, slot: JobSlot, status: int, *, exited: bool) -> None:
        if slot.result is None or slot.result.status != "success":
            # The writer's death comes first, so a job that failed or crashed around it is canceled
            # (the run's failure): a worker whose writer socket broke may report before the writer's
            # pidfd is seen, and a step printing dies of its broken pipe (the writer reads its
            # output) while a send in this very turn of the loop finds the writer dead.
            self._writer_check(self.writer.dead())
        if slot.result is None or slot.result.failure_kind == m.WORKER_CRASHED:
            self._sweep(slot)  # the worker died before stopping its job: whatever it left
        elif exited and not self.jobs[slot.name].limits.empty:
            self._untrack(slot)
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
        """Whatever a worker that died mid-job left: its cgroup's members (tracking or limits: a
        step cannot leave it), then processes tagged with the job's LOOM_RUN_ID/LOOM_JOB_ID."""
        cgroup = JobCgroup(f"{self.run_id}.{slot.name}")
        cgroup.attach_existing()

        def find() -> list[Any]:
            procs = {p.pid: p for p in cgroup.processes()}
            procs.update((p.pid, p) for p in tagged(self.run_id, slot.name))
            procs.update((p.pid, p) for p in self._orphans(slot))
            return list(procs.values())

        swept = stop_processes(find, 0.0)
        slot.sweep = f"{slot.sweep}; {swept}" if slot.sweep else swept
        cgroup.remove()
        # A remote job's containers are on its node's engine, not this machine's: the node's guard
        # removes them (workers/remote/guard.py), or the gateway's cleanup when only the worker died.
        if self.jobs[slot.name].provider == "docker" and not self.run_id.startswith("loom-run-remote-"):
            from loomrun.supervisor import janitor

            run_id, job_id = self.run_id, slot.name
            done = janitor.spawn("docker job", lambda: janitor.docker_reap_run(run_id, job_id)).wait(60.0)
            slot.sweep += "; containers removed" if done else "; container removal timed out"

    def _untrack(self, slot: JobSlot) -> None:
        """A job with limits whose worker reported has exited: its worker removed the job's cgroup;
        should it still be there (a process the worker could not stop), stop that and remove it."""
        cgroup = JobCgroup(f"{self.run_id}.{slot.name}")
        cgroup.attach_existing()
        if cgroup.dirs:
            stop_processes(cgroup.processes, 0.0)
            cgroup.remove()

    # -- the run's tracking cgroup ------------------------------------------------------------------
    def _track(self, forks: ForkServer) -> None:
        """After a spawn (which the fork server answers only once it is in its tracking cgroup):
        that cgroup, which holds every worker it forks, is the run's."""
        self.tracked_pid = forks.pid
        cgroup = TrackingCgroup.of(forks.pid)
        if cgroup is None:  # this host does not let us make one
            return
        self.run_cgroups.append(cgroup)
        if self.note is not None:
            self.note([str(c.path) for c in self.run_cgroups])

    def _orphans(self, dead: JobSlot) -> list[Any]:
        """Processes of the run's cgroup that no live worker leads to: what dead workers left.
        (The fork server and live workers are in it too; so are their descendants.)"""
        if not self.run_cgroups:
            return []
        live = {s.pid for s in self.slots.values() if s is not dead} | {s.pid for s in self.exiting.values()}
        if self.tracked_pid is not None:
            live.add(self.tracked_pid)
        members = set().union(*(c.pids() for c in self.run_cgroups)) - live
        return handles(p for p in members if descends_from(p, live) is False)

    def _untrack_run(self) -> None:
        """The run is over: anything but the fork server still in the run's cgroups is stopped. The
        fork server stays where it is (moving it out would be another migration, on the way to the
        receipt); its cgroups go with it (`ForkServer.close`)."""
        cgroups, self.run_cgroups = self.run_cgroups, []
        keep = {self.tracked_pid}
        for cgroup in cgroups:
            stop_processes(lambda c=cgroup: handles(c.pids() - keep), 0.0)  # type: ignore[misc]

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
        if res is not None and res.failure_kind == m.WORKER_CRASHED and slot.stop_kind is None and status != 0:
            msg = f"{res.message} ({describe_status(status)})"  # a clean exit adds nothing: `node lost: <id>`
        self._record(slot.name, st, code, kind, msg, slot, started_ns=slot.started_ns,
                     resources=res.resources if res else {}, cache_hits=res.cache_hits if res else (),
                     outputs=res.outputs if res else {})

    def _record(self, name: str, status: str, code: int | None, kind: str | None, message: str,
                slot: JobSlot | None, *, started_ns: int | None, resources: dict[str, Any] | None = None,
                cache_hits: tuple[str, ...] = (), outputs: dict[str, str] | None = None) -> None:
        job = self.jobs[name]
        now = time.time_ns()
        seconds = (now - started_ns) / 1e9 if started_ns else None
        answer = not self.quiet and (self.stream or status == "failed")
        ended = m.JobEnded(
            name, job.stage, status, code, kind, message, job.provider,
            job.image.name if job.image else None, started_ns, now, resources or {},
            job.allow_failure, slot.step if slot is not None else None, slot.sweep if slot is not None else "",
            answer=answer,
        )
        self.ended.append(ended)
        self.writer.send(ended)
        self.outcomes[name] = Outcome(name, status, code, kind, message, seconds, cache_hits, outputs or {})
        if status in ("failed", "canceled"):
            self.finish_order.append(name)
        line = EndLine(name, status, code, kind, message, seconds)
        self.said.append(line)
        if answer:
            self.unwritten[name] = line
        else:
            self._flush_said()
        if self.sched.state[name] == "running":  # not for a job settled before it started (skipped, canceled)
            for skipped, reason in self.sched.finish(name, status):
                self._record(skipped, "skipped", None, m.DEPENDENCY_FAILED, reason, None, started_ns=None)

    # -- the terminal, in the order things were decided -----------------------------------------
    def _say(self, call: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        if self.said:
            self.said.append(partial(call, *args, **kwargs))
        else:
            call(*args, **kwargs)

    def _written(self, msg: m.JobWritten) -> None:
        line = self.unwritten.pop(msg.job_id, None)
        if line is None:  # released already (the writer died, or took too long)
            return
        line.message, line.tail = msg.message, msg.tail  # redacted by the writer, which knows the secrets
        outcome = self.outcomes.get(msg.job_id)
        if outcome is not None:
            self.outcomes[msg.job_id] = outcome._replace(message=msg.message)
        self._flush_said()

    def _release_all(self) -> None:
        """No answer is coming (the writer died or hangs): print every held line now."""
        self.unwritten.clear()
        self._flush_said()

    def _flush_said(self) -> None:
        said = self.said
        while said:
            head = said[0]
            if isinstance(head, EndLine):
                if head.name in self.unwritten:
                    return
                said.popleft()
                self._print_end(head)
            else:
                said.popleft()
                head()

    def _print_end(self, line: EndLine) -> None:
        why = self._why(self.jobs[line.name], line.status, line.code, line.kind, line.message)
        if line.status != "failed":
            self.term.job_ended(line.name, line.status, line.seconds, why)
            return
        import shlex  # a failed job's hint names it as a shell would need it

        hint = f"loom logs {self.run_id} --job {shlex.quote(line.name)}"
        self.term.job_ended(line.name, line.status, line.seconds, why, tail=line.tail, logs_hint=hint)

    def _await_written(self, timeout_s: float = 120.0) -> None:
        """Every job's end line is printed before the run's own lines: wait for the writer's last
        answers (a writer that dies or hangs releases them unanswered)."""
        deadline = time.monotonic() + timeout_s
        while self.unwritten:
            left = deadline - time.monotonic()
            ready = wait([*self.writer.waitables(), self.wakeup_fd], timeout=max(0.0, left))
            if self.wakeup_fd in ready:
                self._signals()
            if self.writer.conn in ready:
                self._from_writer()
            if self.writer.sentinel in ready and self.writer.dead():
                self._writer_check(dead=True)
            if left <= 0:
                break
        self._release_all()

    @staticmethod
    def _why(job: Job, status: str, code: int | None, kind: str | None, message: str) -> str:
        if status == "success":
            return ""
        if status == "skipped":
            return message
        why = f"exit code {code}" if kind == m.STEP_FAILED else (message or kind or "")
        if kind not in (m.STEP_FAILED, None, status) and message and kind not in message:
            why = f"{kind}: {message}"  # not `canceled (canceled: ...)`: the kind is said once
        if status == "failed" and job.allow_failure:
            why += ", allowed to fail"
        return why
