"""Leftovers of dead runs on the engine: containers, networks and volumes labelled `loom.run_id` whose
run no longer exists. Runs in a short-lived child of the supervisor (the janitor) or in a thread of
the first Docker job's worker; never in the supervisor itself, which does not import `docker`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path
from typing import Any

from docker.errors import APIError, DockerException, NotFound

from workers.providers.docker.engine import JOB_LABEL, RUN_LABEL, RUNTIME_LABEL, connect


def reap_leftovers(alive_run_ids: Collection[str], prefix: str = "", timeout_s: float = 30.0) -> list[str]:
    """Remove containers, networks and volumes labelled `loom.run_id` of runs that no longer exist.

    A run is alive when it is in `alive_run_ids` (the caller's own repo) or when the `loom.runtime`
    label names the runtime folder of another repo whose lock for that run is still held: runs of
    other repos on the same engine are left alone. Only run ids starting with `prefix` are considered.
    Returns what was removed, e.g. `container loom-run-local-1-build`. ProviderError: engine unreachable.
    """
    alive = set(alive_run_ids)

    def doomed(labels: dict[str, str]) -> bool:
        run_id = labels.get(RUN_LABEL, "")
        if not run_id.startswith(prefix) or run_id in alive:
            return False
        return not _held_elsewhere(labels.get(RUNTIME_LABEL, ""), run_id)

    return _reap(connect(timeout_s), [RUN_LABEL], doomed)


def _held_elsewhere(runtime: str, run_id: str) -> bool:
    """True when the run's lock file in `runtime` (see loomrun.supervisor.locks) has a live owner."""
    from filelock import FileLock, Timeout

    path = Path(runtime) / "runs" / f"{run_id}.lock" if runtime else None
    if path is None or not path.is_file():
        return False
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return True  # cannot tell: keep what may belong to a live run
    lock.release()
    return False


def reap_run(run_id: str, job_id: str | None = None, timeout_s: float = 30.0) -> list[str]:
    """Remove everything labelled with this run (and job, when given)."""
    wanted = [f"{RUN_LABEL}={run_id}"] + ([f"{JOB_LABEL}={job_id}"] if job_id else [])
    return _reap(connect(timeout_s), wanted, lambda _labels: True)


def _reap(api: Any, label_filter: list[str], doomed: Callable[[dict[str, str]], bool],
          settle_s: float = 10.0) -> list[str]:
    """Remove what `doomed` says, containers first (a network cannot go while one is attached).
    Removals that fail are tried again for up to `settle_s`: a container whose own worker was
    removing it when it was killed is "removal in progress" (409) for a moment, and its network
    can only go after it."""
    removed: list[str] = []
    deadline = time.monotonic() + settle_s
    while True:
        left = _reap_once(api, label_filter, doomed, removed)
        if not left or time.monotonic() >= deadline:
            return removed
        time.sleep(0.2)


def _reap_once(api: Any, label_filter: list[str], doomed: Callable[[dict[str, str]], bool],
               removed: list[str]) -> int:
    """One pass; returns how many doomed objects could not be removed."""
    left = 0
    for c in api.containers(all=True, filters={"label": label_filter}):
        if doomed(c.get("Labels") or {}):
            name = (c.get("Names") or [c["Id"]])[0].lstrip("/")
            left += _remove(f"container {name}", partial(api.remove_container, c["Id"], force=True), removed)
    for n in api.networks(filters={"label": label_filter}):
        if doomed(n.get("Labels") or {}):
            left += _remove(f"network {n['Name']}", partial(api.remove_network, n["Id"]), removed)
    for v in api.volumes(filters={"label": label_filter}).get("Volumes") or []:
        if doomed(v.get("Labels") or {}):
            left += _remove(f"volume {v['Name']}", partial(api.remove_volume, v["Name"], force=True), removed)
    return left


def _remove(what: str, remove: Callable[[], object], removed: list[str]) -> int:
    """Run one removal: 0 when it is gone (or already was), 1 when it must be tried again."""
    try:
        remove()
    except NotFound:
        return 0
    except (APIError, DockerException):
        return 1
    removed.append(what)
    return 0
