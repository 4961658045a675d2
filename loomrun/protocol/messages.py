"""Named messages. Commands are imperative (Cancel, AttachWorker), events past tense (StepFinished).

Three channels:
* supervisor <-> worker: a duplex multiprocessing Pipe per job (Cancel down; progress and
  JobFinished up). EOF on it is itself an event: the worker died (or the supervisor did).
* worker -> writer: a socket pair per job whose writer end the supervisor hands to the writer
  (AttachWorker + SCM_RIGHTS). Phase, section and step records; each StepStarted is followed by the
  read ends of the step's stdout/stderr pipes, so the writer reads step output directly.
* supervisor <-> writer: run-level records down, WriterReady / JobWritten / RunWritten / WriterFailed up.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# ---- failure kinds (spec §9.2) ----------------------------------------------------------------

STEP_FAILED = "step_failed"
TIMEOUT = "timeout"
MEMORY_LIMIT = "memory_limit"
PIDS_LIMIT = "pids_limit"
WORKER_CRASHED = "worker_crashed"
PROVIDER_ERROR = "provider_error"
SECRETS_ERROR = "secrets_error"
CANCELED = "canceled"
DEPENDENCY_FAILED = "dependency_failed"

# Reserved worker exit codes: the runner's own failures are never "the job failed".
WORKER_EXIT_OK = 0
WORKER_EXIT_BOOT_ERROR = 70  # the worker could not start its job (bootstrap failed)
WORKER_EXIT_LOST_SUPERVISOR = 71  # the supervisor went away; the job was stopped and cleaned up


# ---- supervisor -> worker -----------------------------------------------------------------------


class Cancel(NamedTuple):
    """Stop the job: TERM its processes, wait `grace_s`, KILL; then clean up and report."""

    kind: str  # timeout | canceled
    grace_s: float
    reason: str = ""


# ---- worker -> supervisor -----------------------------------------------------------------------


class StepBegan(NamedTuple):
    job_id: str
    step: int  # 1-based step number


class StepEnded(NamedTuple):
    job_id: str
    step: int  # 1-based step number
    exit_code: int


class Notice(NamedTuple):
    """A line for the terminal in --verbose mode (cache hit/miss, image, workspace)."""

    job_id: str
    text: str


class Warned(NamedTuple):
    """A warning for the terminal, whatever the verbosity but -q (spec §11): a path that matched
    nothing, an optional secret skipped, a quarantined key bypassed. The worker also writes it into
    the section's events."""

    job_id: str
    text: str


class JobFinished(NamedTuple):
    job_id: str
    status: str  # success | failed | canceled
    exit_code: int | None
    failure_kind: str | None
    message: str  # one line; "" on success
    resources: dict[str, Any] = {}  # never mutated: a shared default is safe
    cache_hits: tuple[str, ...] = ()
    outputs: dict[str, str] = {}  # never mutated: a shared default is safe  # relpath -> sha256+mode (for --cache-diff)


# ---- worker -> writer ---------------------------------------------------------------------------


class PhaseMark(NamedTuple):
    """A job phase started (status None) or finished (status success|failed|skipped)."""

    job_id: str
    phase_code: str
    ts_ns: int
    status: str | None = None


class SectionBegan(NamedTuple):
    job_id: str
    name: str
    ts_ns: int


class SectionLines(NamedTuple):
    job_id: str
    name: str
    lines: tuple[str, ...]
    stream: str
    ts_ns: int


class SectionEnded(NamedTuple):
    job_id: str
    name: str
    status: str  # success | failed | skipped
    ts_ns: int
    error_code: str = ""
    message: str = ""
    details: dict[str, Any] = {}  # never mutated: a shared default is safe  # e.g. cache hit/miss, sizes


class StepStarted(NamedTuple):
    """Followed on the same socket by two fds: the read ends of the step's stdout and stderr."""

    job_id: str
    step: int  # 1-based step number
    command: str
    ts_ns: int


class StepFinished(NamedTuple):
    job_id: str
    step: int  # 1-based step number
    exit_code: int
    duration_ms: int
    ts_ns: int


class ArtifactsStaged(NamedTuple):
    """Files copied out of the job into `staging_dir`; the writer moves them under the logs dir."""

    job_id: str
    staging_dir: str
    files: tuple[str, ...]


class JobPlaced(NamedTuple):
    """A remote job was placed on a cluster node (spec §12); its manifest names the node."""

    job_id: str
    node_id: str
    address: str
    labels: dict[str, str]


class Records(NamedTuple):
    """Several worker records sent at once, handled in order (see workers/report.py)."""

    records: tuple[Any, ...]


class Redact(NamedTuple):
    """Secret values to replace with `[REDACTED:SECRET_<NAME>]` in everything the writer writes."""

    values: tuple[tuple[str, str], ...]  # (name, value)


# ---- supervisor -> writer -----------------------------------------------------------------------


class RunStarted(NamedTuple):
    run_id: str
    pipeline_id: str
    repo_root: str
    workflow_path: str
    command: tuple[str, ...]
    started_ns: int
    stream: bool = False  # tee step output to the terminal, prefixed with the job name
    color: bool = False


class RunPhase(NamedTuple):
    phase_code: str  # run.bootstrap | run.pipeline_execute | pipeline.execute | run.finalize
    ts_ns: int
    status: str | None = None


class JobRoster(NamedTuple):
    """Jobs of the run in declaration order: (id, stage)."""

    jobs: tuple[tuple[str, str], ...]


class AttachWorker(NamedTuple):
    """Followed on the same socket by one fd: the writer's end of the job's worker socket."""

    job_id: str


class JobEnded(NamedTuple):
    """The supervisor's final word on a job; the writer finalises its documents."""

    job_id: str
    stage: str
    status: str  # success | failed | skipped | canceled
    exit_code: int | None
    failure_kind: str | None
    message: str
    provider: str
    image: str | None
    started_ns: int | None
    finished_ns: int
    resources: dict[str, Any] = {}  # never mutated: a shared default is safe
    allow_failure: bool = False
    crashed_step: int | None = None  # step in flight when the worker died
    sweep: str = ""  # what the supervisor's own cleanup did when the worker could not (crash, kill)
    replay: bool = False  # re-sent to a writer that took over: record the outcome, keep written docs
    answer: bool = False  # the supervisor waits for JobWritten to print the job's end line


class JSONText(str):
    """A value sent as its JSON text, which the receiver decodes: the Graph IR in a receipt. For
    1,000 jobs its text is 186 KB, where its dicts held ~0.9 MB of the supervisor's memory from
    `configure` to the run's end, and pickling them at the end was the supervisor's peak."""

    __slots__ = ()


class RunEnded(NamedTuple):
    status: str  # success | failure
    exit_code: int
    finished_ns: int
    error: str | None
    receipt: dict[str, Any]  # extra receipt fields (graph_ir as JSONText, snapshot_path, cache_diff, ...)
    write_pipeline: bool = True


class MarkAbandoned(NamedTuple):
    """Mark a dead run's pipeline summary and receipt `failure` / `abandoned`."""

    run_id: str
    facts: dict[str, Any] = {}  # never mutated: a shared default is safe  # its lock's sidecar


class Retain(NamedTuple):
    """Apply retention (spec §13) beside the run: remove what finished runs past these bounds left."""

    runs: int
    max_age_s: float


# ---- writer -> supervisor -----------------------------------------------------------------------


class WriterReady(NamedTuple):
    logs_dir: str


class JobWritten(NamedTuple):
    """The answer to a `JobEnded` that asks for one (`answer`, never a replayed one): the writer
    has drained the job's output (and printed it, with --stream) and written its documents. The
    supervisor prints the job's end line only then, so the line follows the job's output (spec §11)."""

    job_id: str
    message: str  # the JobEnded message, redacted
    tail: tuple[str, ...] = ()  # a failed job: the last lines of its failing step or section, redacted


class RunWritten(NamedTuple):
    receipt_path: str
    warnings: tuple[str, ...] = ()  # for the terminal (what retention could not remove)


class WriterFailed(NamedTuple):
    message: str  # one line, e.g. "No space left on device (/repo/.loom/.runtime/logs/...)"
