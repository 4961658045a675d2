"""`loom run --local`: bootstrap, execute, finalize. Runs in the `loom` process (the supervisor).

1. bootstrap: run id, run lock, writer process, abandoned runs, workflow, runtime config, snapshot
2. execute: the event loop (`loop.Supervisor`) starts one worker per job
3. finalize: `RunEnded` to the writer, which writes the pipeline documents and the receipt last;
   the receipt path is printed before the error line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from loomrun.config import RuntimeConfig, load_runtime_config
from loomrun.errors import ExitCode, LoomError
from loomrun.forkserver.process import ForkServer
from loomrun.protocol import messages as m
from loomrun.protocol.spec import WorkerSpec
from loomrun.repo import no_repo, resolve_workflow_path, runtime_dir
from loomrun.supervisor import janitor, locks
from loomrun.supervisor.env import pipeline_variables, prepare_job
from loomrun.supervisor.loop import Outcome, Supervisor, WriterLost
from loomrun.supervisor.terminal import Terminal
from loomrun.workflow.model import Job, Workflow
from loomrun.workspace import GitFacts
from loomrun.writer import process as writer_process

if TYPE_CHECKING:
    from loomrun.supervisor.jobserver import Pool, Source

# A job's variables made in `configure` are kept for its start below this size; bigger ones are
# made again then, so a thousand jobs with large variables never sit in memory at once.
PREPARED_KEEP_BYTES = 64 * 1024


def _grace_s() -> float:
    """LOOM_STOP_GRACE_S, bounded: it becomes a wait, and poll() takes a C int of milliseconds."""
    try:
        value = float(os.environ.get("LOOM_STOP_GRACE_S", "5"))
    except ValueError:
        return 5.0
    return min(max(value, 0.0), 3600.0) if value == value else 5.0  # NaN is not equal to itself


GRACE_S = _grace_s()


class RunOptions(NamedTuple):
    workflow: str | None = None
    stream: bool = False
    verbose: bool = False
    quiet: bool = False
    cache_diff: bool = False
    docker_workspace_mount: str | None = None
    max_jobs: int | None = None
    only_jobs: tuple[str, ...] = ()
    cache_enabled: bool = True
    fingerprint_outputs: bool = False
    command: tuple[str, ...] = ("loom", "run", "--local")


class RunResult(NamedTuple):
    run_id: str
    exit_code: int
    status: str
    error: str | None
    receipt_path: str | None
    logs_dir: str | None
    outcomes: dict[str, Outcome]


class _Failed(Exception):
    """The run cannot go on; `message` becomes the receipt's error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def locate(workflow: str | None) -> tuple[Path, Path]:
    """(workflow path, repo root). A workflow outside any repo (no git, no `.loom/` above it) is a
    LoomError here, before anything is written: loom never makes a `.loom/.runtime` of its own
    choosing (`--workflow /etc/passwd`, or a `loom run` in a folder that is no repo)."""
    path, root = resolve_workflow_path(workflow)
    if root is None:
        raise no_repo(path)
    return path, root


class Run:
    def __init__(self, opts: RunOptions, term: Terminal) -> None:
        self.opts = opts
        self.term = term
        self.workflow_path, self.repo_root = locate(opts.workflow)
        self.runtime = runtime_dir(self.repo_root)
        self.started_ns = time.time_ns()
        self.run_id = f"loom-run-local-{self.started_ns}"
        self.pipeline_id = f"loom-local-{self.started_ns}"
        self.receipt: dict[str, Any] = {}
        self.wf: Workflow | None = None
        self.janitors: list[janitor.Janitor] = []
        self.snapshot_path: Path | None = None
        self.head_sha: str | None = None
        self.git: GitFacts | None = None
        self.pipeline_vars: dict[str, str] = {}
        self.prepared: dict[str, tuple[dict[str, str], Job]] = {}  # job -> (its variables, expanded job)
        self.skipped: str | None = None  # why workflow.rules skipped the pipeline
        self.config: RuntimeConfig | None = None
        self.mount_mode = "ephemeral_volume"
        self.sup: Supervisor | None = None
        self.forks: ForkServer | None = None
        self.pool: Pool | None = None  # the jobserver (spec §13)
        self.docker_leftovers: tuple[str, ...] | None = None  # alive run ids, for the first Docker job

    # -- bootstrap ----------------------------------------------------------------------------
    def start_writer(self) -> None:
        try:
            self.lock = locks.RunLock(self.runtime, self.run_id)
        except OSError as exc:
            raise LoomError(f"cannot use {self.runtime}: {exc.strerror or exc}") from exc
        self.writer = writer_process.spawn()
        self.writer.conn.send(m.RunStarted(
            self.run_id, self.pipeline_id, str(self.repo_root), str(self.workflow_path),
            self.opts.command, self.started_ns, stream=self.opts.stream))
        reply = self._writer_reply(30.0)
        if isinstance(reply, m.WriterFailed):
            self._stop_writer()
            self.lock.release()
            raise LoomError(f"cannot write logs: {reply.message}")
        self.logs_dir = reply.logs_dir
        self.term.detail(f"run id {self.run_id}")
        self.term.detail(f"logs {self.logs_dir}")
        self._reap_abandoned()

    def _writer_reply(self, timeout_s: float) -> Any:
        from multiprocessing.connection import wait

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready = wait([self.writer.conn, self.writer.sentinel], timeout=deadline - time.monotonic())
            if self.writer.conn in ready:
                try:
                    return self.writer.conn.recv()
                except (EOFError, OSError):
                    pass
            if ready:
                return m.WriterFailed("writer process exited")
        return m.WriterFailed("writer process did not answer")

    def _reap_abandoned(self) -> None:
        from loomrun.supervisor import abandoned

        def mark(run_id: str) -> None:
            self.term.detail(f"run {run_id} was abandoned; marking it and reaping what it left")
            self.writer.conn.send(m.MarkAbandoned(run_id))

        if abandoned.reap(self.runtime, mark) and _docker_configured():
            alive = locks.alive_runs(self.runtime) | {self.run_id}
            self.janitors.append(janitor.spawn("docker leftovers", lambda: janitor.docker_reap_leftovers(alive)))

    def load(self) -> Workflow:
        from loomrun.workflow.errors import WorkflowInvalid, format_diagnostic
        from loomrun.workflow.resolve import load_workflow

        self.writer.conn.send(m.RunPhase("run.bootstrap", time.time_ns()))
        try:
            wf = load_workflow(self.workflow_path, self.repo_root)
        except WorkflowInvalid as exc:
            for diag in exc.diagnostics:
                self.term.event(format_diagnostic(diag))
            self.receipt["workflow_errors"] = [d.as_receipt_item() for d in exc.diagnostics]
            raise _Failed(exc.message) from exc
        except LoomError as exc:
            raise _Failed(exc.message) from exc
        for warning in wf.warnings:
            self.term.event(f"warning: {warning.message}")
        self.wf = wf
        return wf

    def configure(self, wf: Workflow) -> list[Job]:
        """Runtime config, git facts, the predefined variables, `workflow.rules`, `--job`, then every
        job's variables and expanded paths (an error in any is the run's, before anything starts).
        An empty list with `skipped` set: the rules skip the pipeline."""
        from loomrun.workflow.graph import graph_ir, select_jobs
        from loomrun.workflow.rules import rule_context, skip_reason
        from loomrun.workflow.variables import ExpansionError
        from loomrun.workspace import git_facts

        self.receipt["graph_ir"] = graph_ir(wf)
        try:  # every run reads the config, so a bad one fails a host-only run too (spec §8)
            self.config = load_runtime_config(self.repo_root, self.opts.docker_workspace_mount)
            self.git = git_facts(self.repo_root)
        except LoomError as exc:
            raise _Failed(exc.message) from exc
        self.mount_mode = self.config.docker_workspace_mount
        # Retention runs in the writer, beside this run's start (spec §13): logs, receipts and
        # snapshots of old finished runs.
        self.writer.conn.send(m.Retain(self.config.retention_runs, self.config.retention_max_age_s))
        self.pipeline_vars = pipeline_variables(
            run_id=self.run_id, pipeline_id=self.pipeline_id, project_dir=str(self.snapshot_dest),
            project_name=self.repo_root.name, git=self.git)
        try:
            self.skipped = skip_reason(wf, rule_context(wf, self.pipeline_vars, os.environ))
        except ExpansionError as exc:
            raise _Failed(f"workflow.rules: {exc}") from exc
        if self.skipped is not None:
            return []
        jobs = list(wf.jobs)
        if self.opts.only_jobs:
            try:
                keep = set(select_jobs(wf, self.opts.only_jobs))
            except LoomError as exc:
                raise _Failed(exc.message) from exc
            jobs = [j for j in jobs if j.name in keep]
        for job in jobs:
            prepared = self._prepare(job)
            if prepared[0].get("LOOM_JOBSERVER", "on") not in ("on", "off"):
                raise _Failed(f'job "{job.name}": variables: LOOM_JOBSERVER must be "on" or "off", '
                              f'not "{prepared[0]["LOOM_JOBSERVER"][:60]}"')
            if sum(len(v) for v in prepared[0].values()) < PREPARED_KEEP_BYTES:
                self.prepared[job.name] = prepared
        return jobs

    @property
    def snapshot_dest(self) -> Path:
        return self.runtime / "workspaces" / self.run_id

    def _prepare(self, job: Job) -> tuple[dict[str, str], Job]:
        project = "/workspace" if job.provider == "docker" else str(self.snapshot_dest)
        try:
            return prepare_job(job, self.pipeline_vars, project)
        except LoomError as exc:
            raise _Failed(exc.message) from exc

    def snapshot(self) -> None:
        """This run's snapshot. Old ones are the writer's retention's (sent `Retain` in `configure`)."""
        from loomrun.workspace import make_snapshot

        try:
            snap = make_snapshot(self.repo_root, self.snapshot_dest, self.git)
        except LoomError as exc:
            raise _Failed(f"cannot snapshot the workspace: {exc.message}") from exc
        except OSError as exc:
            raise _Failed(f"cannot snapshot the workspace: {exc.strerror or exc} ({exc.filename})") from exc
        self.snapshot_path, self.head_sha = snap.path, snap.head_sha
        self.receipt["snapshot_path"] = str(snap.path)
        self.receipt["snapshot_head_sha"] = snap.head_sha
        self.term.detail(f"workspace {snap.path} ({snap.files} files)")

    # -- execute ------------------------------------------------------------------------------
    def make_spec(self, deps: dict[str, tuple[str, ...]]) -> Any:
        assert self.snapshot_path is not None
        staging = self.runtime / "tmp" / self.run_id / "artifacts"

        def make(job: Job) -> WorkerSpec:
            # Prepared (and checked) in `configure`; a big one was let go then, and is made again
            # here, which cannot fail: the same inputs passed then.
            prepared = self.prepared.pop(job.name, None)
            env, job = prepared if prepared is not None else self._prepare(job)
            dep_art = tuple((d, str(staging / d)) for d in deps.get(job.name, ()))
            leftovers = None
            if job.provider == "docker" and self.docker_leftovers is not None:
                leftovers, self.docker_leftovers = self.docker_leftovers, None
            assert self.snapshot_path is not None
            return WorkerSpec(
                run_id=self.run_id, pipeline_id=self.pipeline_id, job=job, workspace=self.snapshot_path,
                runtime_dir=self.runtime, env=env, mount_mode=self.mount_mode,
                trace=os.environ.get("LOOM_DEBUG_TRACE") == "1", grace_s=GRACE_S,
                cache_enabled=self.opts.cache_enabled, head_sha=self.head_sha or "",
                dependency_artifacts=dep_art, fingerprint_outputs=self.opts.fingerprint_outputs,
                docker_leftovers=leftovers,
                cache_max_size=self.config.cache_max_size_bytes if self.config is not None else None,
            )
        return make

    def execute(self, jobs: list[Job], wakeup_fd: int) -> Supervisor:
        from loomrun.workflow.graph import dependencies

        assert self.wf is not None
        deps = dependencies(self.wf)
        self.writer.conn.send(m.JobRoster(tuple((j.name, j.stage) for j in jobs)))
        self.writer.conn.send(m.RunPhase("run.bootstrap", time.time_ns(), "success"))
        self.writer.conn.send(m.RunPhase("run.pipeline_execute", time.time_ns()))
        self.writer.conn.send(m.RunPhase("pipeline.execute", time.time_ns()))
        if any(j.provider == "docker" for j in jobs):
            # The first Docker job's worker removes dead runs' leftovers: it imports the SDK anyway.
            self.docker_leftovers = tuple(sorted(locks.alive_runs(self.runtime) | {self.run_id}))
        max_jobs = self._jobserver(len(jobs))
        sup = Supervisor(jobs=jobs, deps=deps, max_jobs=max_jobs,
                         writer=self.writer, terminal=self.term, make_spec=self.make_spec(deps),
                         run_id=self.run_id, grace_s=GRACE_S, wakeup_fd=wakeup_fd, forks=self.forks,
                         pool=self.pool)
        self.sup = sup
        sup.execute()
        status = "success" if not _failed_jobs(sup) else "failed"
        self.writer.conn.send(m.RunPhase("pipeline.execute", time.time_ns(), status))
        self.writer.conn.send(m.RunPhase("run.pipeline_execute", time.time_ns(), status))
        return sup

    def _jobserver(self, n_jobs: int) -> int:
        """Set up the jobserver (spec §13; see jobsource.choose); the run's --jobs bound. Under an
        outside jobserver without an explicit --jobs, that pool alone bounds the run."""
        from loomrun.supervisor.jobserver import OwnBudget, Pool

        budget = self.opts.max_jobs or os.cpu_count() or 1
        setting = self.config.jobserver if self.config is not None else "on"
        source: Source | None = OwnBudget(budget)
        warning = ""
        if setting != "on" or "--jobserver-" in os.environ.get("MAKEFLAGS", ""):  # see jobsource.choose
            from loomrun.supervisor import jobsource

            try:
                source, warning = jobsource.choose(setting, os.environ, budget)
            except LoomError as exc:
                raise _Failed(exc.message) from exc
        if warning:
            self.term.event(f"warning: {warning}")
        if source is None:
            return budget
        folder = self.runtime / "tmp" / self.run_id / "jobserver"
        try:
            self.pool = Pool(folder, source)
        except OSError as exc:  # a file system without fifos: the run goes on without a jobserver
            source.close()
            self.term.event(f"warning: no jobserver: cannot make a fifo in {folder}: {exc.strerror or exc}")
            return budget
        self.term.detail(f"jobserver: {source.label}" + (f", {source.slots} slots" if source.slots else ""))
        borrowed = source.spare() is not None
        return max(1, n_jobs) if borrowed and self.opts.max_jobs is None else budget

    # -- finalize -----------------------------------------------------------------------------
    def finalize(self, exit_code: int, error: str | None) -> RunResult:
        status = "success" if exit_code == 0 else "failure"
        receipt_path: str | None = None
        if self.pool is not None:  # every job has ended: borrowed tokens go back, lost ones are counted
            self.pool.close()
            self.receipt["jobserver"] = self.pool.summary()
            self.pool = None
        try:
            self.writer.conn.send(m.RunPhase("run.finalize", time.time_ns()))
            self.writer.conn.send(m.RunPhase("run.finalize", time.time_ns(), status))
            self.writer.conn.send(m.RunEnded(status, exit_code, time.time_ns(), error, self.receipt))
            reply = self._writer_reply(120.0)
            if isinstance(reply, m.RunWritten):
                receipt_path = reply.receipt_path
            elif isinstance(reply, m.WriterFailed):
                error = f"{error + '; ' if error else ''}cannot write the receipt: {reply.message}"
                exit_code = exit_code or ExitCode.FAILED
        except OSError:
            error = f"{error + '; ' if error else ''}the writer process is gone; no receipt was written"
            exit_code = exit_code or ExitCode.FAILED
        self._stop_writer()
        for j in self.janitors:
            j.wait(60.0)
        shutil.rmtree(self.runtime / "tmp" / self.run_id, ignore_errors=True)
        self.lock.release()
        outcomes = self.sup.outcomes if self.sup else {}
        return RunResult(self.run_id, exit_code, status, error, receipt_path, self.logs_dir, outcomes)

    def _stop_writer(self) -> None:
        from multiprocessing.connection import wait

        with contextlib.suppress(OSError):
            self.writer.conn.close()
        with contextlib.suppress(OSError, ValueError):
            wait([self.writer.sentinel], timeout=60)  # its pidfd: readable the moment it exits
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.writer.pid, os.WNOHANG)
        with contextlib.suppress(OSError):
            os.close(self.writer.sentinel)

    def restart_writer(self, why: str) -> None:
        """The writer died mid-run: a new one takes over to record the failure and the receipt."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.writer.pid, os.WNOHANG)
        self.writer = writer_process.spawn()
        self.writer.conn.send(m.RunStarted(
            self.run_id, self.pipeline_id, str(self.repo_root), str(self.workflow_path),
            self.opts.command, self.started_ns, stream=False))
        reply = self._writer_reply(30.0)
        if not isinstance(reply, m.WriterReady):
            raise LoomError(f"{why}; a new writer could not start either")
        if self.sup is not None:
            self.sup.writer = self.writer
            self.writer.conn.send(m.JobRoster(tuple((j, self.sup.jobs[j].stage) for j in self.sup.sched.order)))
            for ended in self.sup.ended:
                self.writer.conn.send(ended._replace(replay=True))


def _docker_configured() -> bool:
    return bool(os.environ.get("DOCKER_HOST")) or Path("/var/run/docker.sock").exists()


def _failed_jobs(sup: Supervisor) -> list[str]:
    return [n for n in sup.finish_order
            if sup.outcomes[n].status == "failed" and not sup.jobs[n].allow_failure]


def _error_for(sup: Supervisor) -> str | None:
    failed = _failed_jobs(sup)
    if not failed:
        return None
    first = sup.outcomes[failed[0]]
    why = Supervisor._why(sup.jobs[first.name], first.status, first.exit_code, first.failure_kind, first.message)
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return f'job "{first.name}" failed ({why}){more}'


Amend = Callable[["Run", int, "str | None"], tuple[int, "str | None"]]


class _Interrupted(BaseException):  # like KeyboardInterrupt: no `except Exception` may swallow it
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run_local(opts: RunOptions, term: Terminal | None = None, amend: Amend | None = None,
              forks: ForkServer | None = None) -> RunResult:
    """One run. `amend` (used by --cache-diff) may add receipt fields and change the verdict before
    the receipt is written. `forks`: a fork server started early by the caller (else one per run)."""
    term = term or Terminal(verbose=opts.verbose, quiet=opts.quiet)
    run = Run(opts, term)
    run.forks = forks
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    phase = {"bootstrap": False}  # while the lock and the writer are set up, signals are only recorded

    def on_signal(signum: int, _frame: object) -> None:
        # While bootstrapping (load, snapshot) a signal aborts at once; once jobs run, the handler
        # only records (the wake-up fd carries the number) and the event loop acts.
        if phase["bootstrap"]:
            raise _Interrupted(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    old_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    exit_code, error = 0, None
    signum: int | None = None
    try:
        run.start_writer()
        try:
            phase["bootstrap"] = True
            _raise_pending(wake_r)  # a ^C during start-up: the writer now exists to write the receipt
            wf = run.load()
            jobs = run.configure(wf)
            if run.skipped is not None:
                run.receipt["skipped_reason"] = "workflow.rules"
            else:
                run.snapshot()
                phase["bootstrap"] = False
                _raise_pending(wake_r)  # a signal whose exception some library code swallowed
                sup = run.execute(jobs, wake_r)
                exit_code, error = _verdict(sup)
        except _Interrupted as exc:
            signum = exc.signum
        except _Failed as exc:
            exit_code, error = ExitCode.FAILED, exc.message
        except WriterLost as exc:
            exit_code, error = ExitCode.FAILED, str(exc)
            if run.sup is not None:
                run.restart_writer(error)
                run.sup._cancel_all(m.CANCELED, error)
                with contextlib.suppress(WriterLost):
                    run.sup.execute()
    finally:
        phase["bootstrap"] = False
        signal.set_wakeup_fd(old_fd)
        for s, handler in old.items():
            signal.signal(s, handler)
        os.close(wake_w)
    if run.sup is not None and run.sup.interrupted is not None:
        signum = run.sup.interrupted
    if signum is not None:
        exit_code = ExitCode.SIGINT if signum == signal.SIGINT else ExitCode.SIGTERM
        error = f"interrupted by {signal.Signals(signum).name}"
    if amend is not None:
        exit_code, error = amend(run, int(exit_code), error)
    result = run.finalize(int(exit_code), error)
    os.close(wake_r)
    term.finished(result.exit_code == 0, result.receipt_path, result.error)
    if run.skipped is not None and result.exit_code == 0 and term.final:
        # Last, so a run that did nothing never reads as a pipeline that passed (issue 11 item 19).
        term.line(f"{term.prefix}loom run: pipeline skipped by workflow.rules ({run.skipped})")
    return result


def _raise_pending(fd: int) -> None:
    """The wake-up pipe holds every signal seen so far; one seen during bootstrap cancels the run."""
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 64):
            data += chunk
    for signum in data:
        if signum in (signal.SIGINT, signal.SIGTERM):
            raise _Interrupted(signum)


def _verdict(sup: Supervisor) -> tuple[int, str | None]:
    if sup.writer_error is not None:
        return ExitCode.FAILED, f"cannot write logs: {sup.writer_error}"
    error = _error_for(sup)
    return (ExitCode.FAILED, error) if error else (ExitCode.OK, None)

