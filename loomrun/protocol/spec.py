"""What a worker is started with. Built by the supervisor, pickled to the fork server, read by the
worker. Part of the wire contract: no process-specific imports."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from loomrun.workflow.model import Job


class WorkerSpec(NamedTuple):
    """Everything a worker needs; pickled to the fork server, which forks the worker with it."""

    run_id: str
    pipeline_id: str
    job: Job
    workspace: Path
    runtime_dir: Path
    env: dict[str, str]
    mount_mode: str = "ephemeral_volume"
    trace: bool = False
    grace_s: float = 5.0
    cache_enabled: bool = True
    head_sha: str = ""
    dependency_artifacts: tuple[tuple[str, str], ...] = ()  # (job id, staged artifacts folder)
    fingerprint_outputs: bool = False  # --cache-diff: hash the declared outputs after the job
    docker_leftovers: tuple[str, ...] | None = None  # set for one Docker job: remove dead runs' objects
    remote: str = ""  # a remote run (spec §12): the gateway's socket name; the job's steps run on a node
    cache_max_size: int | None = None  # runtime.cache.maxSize (spec §13); None: unbounded
    jobserver: str = ""  # the run's token fifo for this job's makes (spec §13); "" for none
    jobserver_slots: int = 0  # the pool's size, for -jN in MAKEFLAGS; 0 when unknown
