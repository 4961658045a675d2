"""The wire of remote runs (spec §12): worker <-> gateway, supervisor <-> gateway. No process-specific imports.

* supervisor <-> gateway: a socket pair made when the supervisor forks the gateway. `Connect` down
  (once the address and the snapshot are known), `Connected` or `GatewayFailed` up; `Shutdown` down
  at the end of the run, `Report` up (the nodes used), then the gateway exits.
* worker <-> gateway: one connection per job to the gateway's abstract unix socket (its name is in
  the `WorkerSpec`). Requests down, one reply each (`Done`, `Placed`, `Limits` or `Failed`); `Step`
  is followed by the two write ends of the step's pipes (SCM_RIGHTS), which the gateway fills with
  the bytes the node streams back, so output reaches the writer through the same pipes as locally.
  The step's end comes later, unasked: `StepDone` (with no exit code when its node was lost).

Errors cross as data: a kind (`provider`, `lost`, `infeasible`, `gateway`) and one line.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from loomrun.workflow.model import Job

# ---- supervisor -> gateway ----------------------------------------------------------------------


class Connect(NamedTuple):
    address: str
    run_id: str
    snapshot: str  # the run's snapshot folder, shipped to the cluster once
    socket_name: str  # the abstract unix socket workers connect to


class Shutdown(NamedTuple):
    pass


# ---- gateway -> supervisor ----------------------------------------------------------------------


class Connected(NamedTuple):
    address: str
    ray_version: str
    cpus: float  # logical CPUs of the live nodes: the default --jobs of a remote run


class GatewayFailed(NamedTuple):
    message: str  # one line: "cannot connect to the Ray cluster at ...: ..."


class Report(NamedTuple):
    nodes: tuple[dict[str, Any], ...]  # one per node used: id, address, labels, jobs


# ---- worker -> gateway ----------------------------------------------------------------------------


class Prepare(NamedTuple):
    """Place the job on a node and make it runnable there (the node's private copy of the snapshot,
    then the same provider as locally: `inner` is `host` or `docker`)."""

    run_id: str
    pipeline_id: str
    job: Job
    inner: str
    env: dict[str, str]
    mount_mode: str
    trace: bool
    grace_s: float
    labels: dict[str, str]
    local_workspace: str  # paths in `env` that start with it are rewritten to the node's copy
    secret_files: tuple[tuple[str, str, str], ...] = ()  # (variable, its value here, file content): `file: true`


class Step(NamedTuple):
    """Followed by two fds: the write ends of the step's stdout and stderr pipes."""

    step: int  # 1-based
    command: str


class Stop(NamedTuple):
    grace_s: float


class Hurry(NamedTuple):
    """A second ^C during a stop: cut the grace short. No reply."""


class AskLimits(NamedTuple):
    pass


class Import(NamedTuple):
    src: str  # a local folder copied into the job's workspace on the node


class Export(NamedTuple):
    patterns: tuple[str, ...]
    exclude: tuple[str, ...]
    dest: str  # a local folder the matching files are copied to


class Cleanup(NamedTuple):
    pass


# ---- gateway -> worker ----------------------------------------------------------------------------


Lines = tuple[tuple[str, str], ...]  # (text, stream) said in the provider section
Sections = tuple[tuple[str, Lines, bool, str], ...]  # (name, lines, failed, message): other sections


class Placed(NamedTuple):
    node_id: str
    address: str
    labels: dict[str, str]
    lines: Lines  # what the node's provider said while preparing
    sections: Sections = ()


class Done(NamedTuple):
    lines: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


class Cleaned(NamedTuple):
    lines: tuple[str, ...]  # for the cleanup section
    stops: tuple[str, ...]  # what each stop on the node did (the stop log of a local worker)
    peak_memory: int | None
    cpu_seconds: float


class Limits(NamedTuple):
    memory_exceeded: bool
    pids_exceeded: bool
    peak_memory: int | None


class Failed(NamedTuple):
    kind: str  # provider | lost | infeasible | refused | gateway
    message: str
    section: str = "provider"
    lines: Lines = ()
    sections: Sections = ()


class StepDone(NamedTuple):
    """Sent unasked when a step ended: its exit code, or None and why when its node was lost."""

    step: int
    exit_code: int | None
    lost: str = ""
