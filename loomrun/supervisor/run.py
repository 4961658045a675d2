"""`loom run --local` and `--remote`: bootstrap, execute, finalize. Runs in the `loom` process (the supervisor).

1. bootstrap: run id, run lock, writer process, abandoned runs, workflow, runtime config, snapshot;
   a remote run (spec §12) then has its gateway connect to the Ray cluster and ship the snapshot
2. execute: the event loop (`loop.Supervisor`) starts one worker per job (a remote job's worker
   runs its steps on a cluster node through the gateway)
3. finalize: `RunEnded` to the writer, which writes the pipeline documents and the receipt last;
   the receipt path is printed before the error line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from loomrun.config import RuntimeConfig, load_runtime_config
from loomrun.durable import json_pieces
from loomrun.errors import ExitCode, LoomError
from loomrun.forkserver.process import ForkServer
from loomrun.protocol import messages as m
from loomrun.protocol.spec import WorkerSpec
from loomrun.repo import no_repo, resolve_workflow_path, runtime_dir
from loomrun.supervisor import janitor, locks
from loomrun.supervisor.env import pipeline_variables, prepare_job
from loomrun.supervisor.loop import Outcome, Supervisor
from loomrun.supervisor.terminal import Terminal, choose
from loomrun.supervisor.writerlink import WriterLink
from loomrun.userfiles import NotRegularFile, refuse_special
from loomrun.workflow.model import Job, Workflow
from loomrun.workspace import GitFacts, GitPrefetch

if TYPE_CHECKING:
    from loomrun.remote.handle import Gateway
    from loomrun.supervisor.jobserver import Pool, Source
    from loomrun.supervisor.secrets_broker import SecretsBroker

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
    no_deps: bool = False  # run exactly only_jobs; their upstream artifacts come from earlier runs
    cache_enabled: bool = True
    fingerprint_outputs: bool = False
    command: tuple[str, ...] = ("loom", "run", "--local")
    remote: str | None = None  # the Ray cluster's address: a remote run (spec §12)


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
        _refuse_special(path)
        raise no_repo(path)
    return path, root


def _refuse_special(path: Path) -> None:
    """A FIFO or a device outside any repo (`--workflow /dev/zero`, `<(...)`) is refused for what it
    is, in the words `check` uses, rather than for where it lies."""
    try:
        refuse_special(path)
    except NotRegularFile as exc:
        raise LoomError(f"{path.name}: cannot read {path}: {exc.strerror}") from None
    except OSError:
        return


class Run:
    def __init__(self, opts: RunOptions, term: Terminal) -> None:
        self.opts = opts
        self.term = term
        self.workflow_path, self.repo_root = locate(opts.workflow)
        self.runtime = runtime_dir(self.repo_root)
        self.started_ns = time.time_ns()
        kind = "local" if opts.remote is None else "remote"
        self.run_id = f"loom-run-{kind}-{self.started_ns}"
        self.pipeline_id = f"loom-{kind}-{self.started_ns}"
        self.receipt: dict[str, Any] = {}
        if opts.remote is not None:  # spec §12: every remote receipt has it, a run that failed early too
            self.receipt["remote"] = {"engine": "ray", "address": opts.remote, "nodes": []}
        self.wf: Workflow | None = None
        self.janitors: list[janitor.Janitor] = []
        self.snapshot_path: Path | None = None
        self.head_sha: str | None = None
        self.git: GitFacts | None = None
        self.early_git: GitPrefetch | None = None  # git's answers for configure and snapshot, asked in load
        self.pipeline_vars: dict[str, str] = {}
        self.prepared: dict[str, tuple[dict[str, str], Job]] = {}  # job -> (its variables, expanded job)
        self.skipped: str | None = None  # why workflow.rules skipped the pipeline
        self.config: RuntimeConfig | None = None
        self.mount_mode = "ephemeral_volume"
        self.sup: Supervisor | None = None
        self.forks: ForkServer | None = None
        self.pool: Pool | None = None  # the jobserver (spec §13)
        self.docker_leftovers: tuple[str, ...] | None = None  # alive run ids, for the first Docker job
        self.secrets: SecretsBroker | None = None  # when a job has keepass:// or op:// refs
        self.upstream: dict[str, str] = {}  # --no-deps: upstream job -> artifacts folder of an earlier run
        self.gateway: Gateway | None = None  # a remote run's Ray driver process
        self.cluster_cpus = 0.0

    # -- bootstrap ----------------------------------------------------------------------------
    def start_writer(self) -> None:
        try:
            self.lock = locks.RunLock(  # its sidecar keeps what an abandoned run's receipt needs
                self.runtime, self.run_id, pipeline_id=self.pipeline_id, command=list(self.opts.command),
                repo_root=str(self.repo_root), workflow_path=str(self.workflow_path), started_ns=self.started_ns)
        except OSError as exc:
            raise LoomError(f"cannot use {self.runtime}: {exc.strerror or exc}") from exc
        self.writer = WriterLink(m.RunStarted(
            self.run_id, self.pipeline_id, str(self.repo_root), str(self.workflow_path),
            self.opts.command, self.started_ns, stream=self.opts.stream))
        self.writer.begin()  # its answer is awaited after the load (`await_writer`)
        if self.writer.broken is not None:
            self._no_writer()
        self.term.detail(f"run id {self.run_id}")

    def await_writer(self) -> None:
        """The writer's answer to RunStarted, which it gave while `load` ran (it imports its code
        and makes the logs dir in the meantime: ~5 ms the supervisor waited for before the load)."""
        logs_dir = self.writer.ready()
        if logs_dir is None:
            self._no_writer()
        self.logs_dir = logs_dir
        self.term.detail(f"logs {self.logs_dir}")
        self._reap_abandoned()

    def _no_writer(self) -> NoReturn:
        self.writer.close()
        self.lock.release()
        raise LoomError(f"cannot write logs: {self.writer.failed or self.writer.broken}")

    def _reap_abandoned(self) -> None:
        if not locks.find_abandoned(self.runtime):  # the usual case: nothing to import, nothing to do
            return
        from loomrun.supervisor import abandoned

        def mark(run_id: str, facts: dict[str, Any]) -> None:
            self.term.detail(f"run {run_id} was abandoned; marking it and reaping what it left")
            self.writer.send(m.MarkAbandoned(run_id, facts))

        if abandoned.reap(self.runtime, mark):
            sweeper = abandoned.docker_janitor(self.runtime, frozenset({self.run_id}))
            if sweeper is not None:
                self.janitors.append(sweeper)

    def load(self) -> Workflow:
        from loomrun.workflow.errors import WorkflowInvalid, format_diagnostic
        from loomrun.workflow.resolve import load_workflow

        self.writer.send(m.RunPhase("run.bootstrap", time.time_ns()))
        self.early_git = GitPrefetch.of(self.repo_root)
        if self.early_git is not None:
            self.early_git.start()  # git works on the other core while this process loads
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
            self.term.warning(warning.message)
        self.wf = wf
        return wf

    def configure(self, wf: Workflow, listing: bool = False) -> list[Job]:
        """Runtime config, git facts, the predefined variables, `workflow.rules`, `--job` (and
        `--no-deps`'s upstream artifacts, unless only `listing`), then every job's variables and
        expanded paths (an error in any is the run's, before anything starts). An empty list with
        `skipped` set: the rules skip the pipeline."""
        from loomrun.workflow.graph import graph_ir, select_jobs
        from loomrun.workflow.rules import rule_context, skip_reason
        from loomrun.workflow.variables import ExpansionError
        from loomrun.workspace import git_facts

        self.receipt["graph_ir"] = m.JSONText("".join(json_pieces(graph_ir(wf), 2)))
        try:  # every run reads the config, so a bad one fails a host-only run too (spec §8)
            self.config = load_runtime_config(self.repo_root, self.opts.docker_workspace_mount)
            self.git = git_facts(self.repo_root, self.early_git)
        except LoomError as exc:
            raise _Failed(exc.message) from exc
        self.mount_mode = self.config.docker_workspace_mount
        if not listing:  # retention runs in the writer, beside this run's start (spec §13): logs,
            # receipts and snapshots of old finished runs (`--list` has no writer and removes nothing)
            self.writer.send(m.Retain(self.config.retention_runs, self.config.retention_max_age_s))
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
                if self.opts.no_deps:
                    keep = set(self.opts.only_jobs)
                    if not listing:
                        self.upstream = self._upstream(wf, keep)
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

    @functools.cached_property
    def snapshot_dest(self) -> Path:
        return self.runtime / "workspaces" / self.run_id

    def _prepare(self, job: Job) -> tuple[dict[str, str], Job]:
        project = "/workspace" if job.provider == "docker" else str(self.snapshot_dest)  # (str is cached by the Path)
        try:
            return prepare_job(job, self.pipeline_vars, project)
        except LoomError as exc:
            raise _Failed(exc.message) from exc

    def _upstream(self, wf: Workflow, keep: set[str]) -> dict[str, str]:
        from loomrun.supervisor.upstream import restore_plan
        from loomrun.workflow.graph import dependencies

        plan = restore_plan(wf.jobs, keep, dependencies(wf), self.runtime / "logs", self.run_id)
        for up, (run_id, _) in plan.items():
            self.term.event(f'--no-deps: artifacts of job "{up}" from run {run_id}')
        self.receipt["upstream_artifacts"] = {up: run_id for up, (run_id, _) in plan.items()}
        return {up: str(folder) for up, (_, folder) in plan.items()}

    def snapshot(self) -> None:
        """This run's snapshot. Old ones are the writer's retention's (sent `Retain` in `configure`)."""
        from loomrun.workspace import make_snapshot

        try:
            snap = make_snapshot(self.repo_root, self.snapshot_dest, self.git, self.early_git)
        except LoomError as exc:
            raise _Failed(f"cannot snapshot the workspace: {exc.message}") from exc
        except OSError as exc:
            raise _Failed(f"cannot snapshot the workspace: {exc.strerror or exc} ({exc.filename})") from exc
        self.snapshot_path, self.head_sha = snap.path, snap.head_sha
        self.receipt["snapshot_path"] = str(snap.path)
        self.receipt["snapshot_head_sha"] = snap.head_sha
        self.term.detail(f"workspace {snap.path} ({snap.files} files)")

    def connect_remote(self) -> None:
        """The gateway joins the Ray cluster and ships the snapshot (spec §12)."""
        from loomrun.protocol.remote import GatewayFailed
        from loomrun.remote.handle import Gateway

        address = self.opts.remote
        assert address is not None and self.snapshot_path is not None
        block: dict[str, Any] = self.receipt["remote"]
        if self.gateway is None:
            try:
                self.gateway = Gateway.start()
            except OSError as exc:
                raise _Failed(f"cannot start the gateway process: {exc.strerror or exc}") from exc
        reply = self.gateway.connect(address, self.run_id, str(self.snapshot_path))
        if isinstance(reply, GatewayFailed):
            self.gateway.close(wait_s=0.5)  # it may be stuck inside ray.init: no orderly end to wait for
            self.gateway = None
            raise _Failed(reply.message)
        block["ray_version"] = reply.ray_version
        self.cluster_cpus = reply.cpus
        self.term.detail(f"ray cluster {address}: Ray {reply.ray_version}, {reply.cpus:g} CPUs")

    def close_remote(self) -> None:
        """The gateway ends (and the run's actors with it); the receipt names the nodes used."""
        if self.gateway is not None:
            nodes = self.gateway.shutdown()
            self.gateway = None
            self.receipt["remote"]["nodes"] = list(nodes)

    # -- execute ------------------------------------------------------------------------------
    def make_spec(self, deps: dict[str, tuple[str, ...]]) -> Any:
        assert self.snapshot_path is not None
        staging = self.runtime / "tmp" / self.run_id / "artifacts"

        def make(job: Job) -> WorkerSpec:
            # Prepared (and checked) in `configure`; a big one was let go then, and is made again
            # here, which cannot fail: the same inputs passed then.
            prepared = self.prepared.pop(job.name, None)
            env, job = prepared if prepared is not None else self._prepare(job)
            dep_art = tuple((d, self.upstream.get(d) or str(staging / d)) for d in deps.get(job.name, ()))
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
                docker_leftovers=leftovers, remote=self.gateway.socket_name if self.gateway is not None else "",
                cache_max_size=self.config.cache_max_size_bytes if self.config is not None else None,
            )
        return make

    def execute(self, jobs: list[Job], wakeup_fd: int) -> Supervisor:
        from loomrun.workflow.graph import dependencies

        assert self.wf is not None
        deps = dependencies(self.wf)
        self.writer.send(m.JobRoster(tuple((j.name, j.stage) for j in jobs)))
        self.writer.send(m.RunPhase("run.bootstrap", time.time_ns(), "success"))
        self.writer.send(m.RunPhase("run.pipeline_execute", time.time_ns()))
        self.writer.send(m.RunPhase("pipeline.execute", time.time_ns()))
        if any(j.provider == "docker" for j in jobs) and self.gateway is None:
            # The first Docker job's worker removes dead runs' leftovers: it imports the SDK anyway.
            self.docker_leftovers = tuple(sorted(locks.alive_runs(self.runtime) | {self.run_id}))
        if any(j.secrets for j in jobs):
            self._private_tmp()
        if any(s.ref.startswith(("keepass://", "op://")) for j in jobs for s in j.secrets):
            from loomrun.supervisor.secrets_broker import SecretsBroker

            self.secrets = SecretsBroker(self.repo_root, self.run_id)  # started lazily, by the first such job
        self.lock.note(snapshot_path=self.receipt.get("snapshot_path"),
                       snapshot_head_sha=self.receipt.get("snapshot_head_sha"),
                       graph_ir=self.receipt.get("graph_ir"), roster=[[j.name, j.stage] for j in jobs])
        max_jobs = self._jobserver(len(jobs))
        sup = Supervisor(jobs=jobs, deps=deps, max_jobs=max_jobs,
                         writer=self.writer, terminal=self.term, make_spec=self.make_spec(deps),
                         run_id=self.run_id, grace_s=GRACE_S, wakeup_fd=wakeup_fd, forks=self.forks,
                         note=lambda paths: self.lock.note(cgroups=paths), secrets=self.secrets,
                         stream=self.opts.stream, quiet=self.opts.quiet, pool=self.pool)
        self.sup = sup
        sup.execute()
        status = "success" if not _failed_jobs(sup) else "failed"
        self.writer.send(m.RunPhase("pipeline.execute", time.time_ns(), status))
        self.writer.send(m.RunPhase("run.pipeline_execute", time.time_ns(), status))
        return sup

    def _private_tmp(self) -> None:
        """`tmp/<run_id>/` and its `secrets/` folder are 0700 before any worker writes a secret
        file into them (spec §7.3: nobody else may read one, even while it exists)."""
        tmp = self.runtime / "tmp"
        tmp.mkdir(exist_ok=True)
        for folder in (tmp / self.run_id, tmp / self.run_id / "secrets"):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=0o700)
            os.chmod(folder, 0o700)  # whatever the umask or whoever made it first

    def _jobserver(self, n_jobs: int) -> int:
        """Set up the jobserver (spec §13; see jobsource.choose); the run's --jobs bound. Under an
        outside jobserver without an explicit --jobs, that pool alone bounds the run."""
        from loomrun.supervisor.jobserver import OwnBudget, Pool

        if self.gateway is not None:  # jobs run on cluster nodes, which cannot reach a fifo here
            return self.opts.max_jobs or int(self.cluster_cpus) or 1
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
        receipt_path: str | None = None
        if self.early_git is not None:  # a run that ended before its snapshot: git's answers go unread
            self.early_git.close()
        self.close_remote()
        if self.pool is not None:  # every job has ended: borrowed tokens go back, lost ones are counted
            self.pool.close()
            self.receipt["jobserver"] = self.pool.summary()
            self.pool = None
        exit_code, error = self.with_writer_deaths(exit_code, error)
        self.writer.send(m.RunPhase("run.finalize", time.time_ns()))
        while True:
            status = "success" if exit_code == 0 else "failure"
            self.writer.send(m.RunPhase("run.finalize", time.time_ns(), status))
            reply = self.writer.request(m.RunEnded(status, exit_code, time.time_ns(), error, self.receipt), 120.0)
            if reply is None:  # the writer died before answering; a new one writes the receipt
                exit_code, error = self.with_writer_deaths(exit_code, error)
                continue
            if isinstance(reply, m.RunWritten):
                receipt_path = reply.receipt_path
                for warning in reply.warnings:
                    self.term.warning(warning)
            else:
                why = reply.message if isinstance(reply, m.WriterFailed) else f"unexpected {type(reply).__name__}"
                error = f"{error + '; ' if error else ''}cannot write the receipt: {why}"
                exit_code = exit_code or ExitCode.FAILED
            break
        status = "success" if exit_code == 0 else "failure"
        self.writer.close()
        if self.secrets is not None:
            self.secrets.close()
        for j in self.janitors:
            j.wait(60.0)
        shutil.rmtree(self.runtime / "tmp" / self.run_id, ignore_errors=True)
        self.lock.release()
        outcomes = self.sup.outcomes if self.sup else {}
        return RunResult(self.run_id, exit_code, status, error, receipt_path, self.logs_dir, outcomes)

    def with_writer_deaths(self, exit_code: int, error: str | None) -> tuple[int, str | None]:
        """A writer that died fails the run (what it held of the jobs' output is lost), naming the
        first death; an interrupt keeps its own exit code and error."""
        if not self.writer.deaths or exit_code in (ExitCode.SIGINT, ExitCode.SIGTERM):
            return exit_code, error
        if error is not None and error.startswith("writer process died"):
            return exit_code or ExitCode.FAILED, error
        return ExitCode.FAILED, self.writer.deaths[0]


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
              forks: ForkServer | None = None, relay: Callable[[int], None] | None = None,
              gateway: Gateway | None = None) -> RunResult:
    """One run (on this machine, or its jobs on a Ray cluster when `opts.remote` is set). `amend`
    (used by --cache-diff) may add receipt fields and change the verdict before the receipt is
    written. `forks`: a fork server started early by the caller (else one per run); `gateway`: the
    same for a remote run's gateway process (closed by the run, whatever happens). `relay`
    (--cache-diff) is told every SIGINT/SIGTERM this run gets, from its signal handler."""
    term = term or choose(verbose=opts.verbose, quiet=opts.quiet, stream_output=opts.stream)
    run = Run(opts, term)
    run.forks = forks
    run.gateway = gateway
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    phase = {"bootstrap": False}  # while the lock and the writer are set up, signals are only recorded

    def on_signal(signum: int, _frame: object) -> None:
        # While bootstrapping (load, snapshot) a signal aborts at once; once jobs run, the handler
        # only records (the wake-up fd carries the number) and the event loop acts.
        if relay is not None:
            relay(signum)
        if phase["bootstrap"]:
            raise _Interrupted(signum)

    # The wake-up fd first: from then on every signal is in the pipe, whichever handler runs. In the
    # other order, a signal between the two calls reached on_signal (which only records, outside
    # bootstrap) while nothing recorded it: the ^C was lost and the run went on.
    old_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    exit_code, error = 0, None
    signum: int | None = None
    try:
        run.start_writer()
        try:
            phase["bootstrap"] = True
            try:
                _raise_pending(wake_r)  # a ^C during start-up: the writer now exists to write the receipt
                wf = run.load()
            finally:  # whatever the load did: a writer that cannot write says so first, as it did
                phase["bootstrap"] = False  # (a signal meanwhile waits in the wake-up pipe)
                run.await_writer()
                phase["bootstrap"] = True
            _raise_pending(wake_r)
            jobs = run.configure(wf)
            if run.skipped is not None:
                run.receipt["skipped_reason"] = "workflow.rules"
            else:
                run.snapshot()
                if opts.remote is not None:
                    run.connect_remote()
                phase["bootstrap"] = False
                _raise_pending(wake_r)  # a signal whose exception some library code swallowed
                sup = run.execute(jobs, wake_r)
                exit_code, error = _verdict(sup)
        except _Interrupted as exc:
            signum = exc.signum
        except _Failed as exc:
            exit_code, error = ExitCode.FAILED, exc.message
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
    if run.sup is not None:
        term.summary(run.sup.ended, run.sup.sched.deps, (time.time_ns() - run.started_ns) / 1e9)
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

