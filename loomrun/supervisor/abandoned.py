"""Runs whose supervisor died (SIGKILL): found by their run lock, marked, and reaped. `loom` process.

The next `loom run`, `loom logs` or `loom cache` in the repo does this (spec §5.5): the dead run's
pipeline summary and receipt become `failure` / `abandoned` (written by a writer process, from the
facts its lock's sidecar kept and the job summaries on disk), the processes still in its tracking
cgroup or carrying its `LOOM_RUN_ID`, and its jobs' cgroups, are killed, its `tmp/<run_id>/` (secret
files, artifact staging) is removed, and its lock is forgotten. Its containers, volumes and networks
are removed by a janitor (a forked child that imports the Docker SDK there), whatever the command
and whatever jobs the next run has.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loomrun.proctree import CGROUP_ROOT, JobCgroup, TrackingCgroup, stop_processes, tagged, tracking_pid
from loomrun.supervisor import janitor, locks

if TYPE_CHECKING:
    import psutil

JANITOR_WAIT_S = 60.0
Mark = Callable[[str, dict[str, Any]], None]


def reap(runtime: Path, mark: Mark) -> list[str]:
    """Mark (through `mark`, which hands the work to a writer) and reap every abandoned run."""
    dead = locks.find_abandoned(runtime)
    for run_id in dead:
        facts = locks.facts_of(runtime, run_id)
        mark(run_id, facts)
        stop_processes(_tagged(run_id), 0.0)
        for tracking in _tracking_cgroups(facts):
            for _ in range(100):  # a process just killed may be counted in it for a moment more
                stop_processes(tracking.processes, 0.0)
                if tracking.remove():
                    break
                time.sleep(0.01)
        names = {p.name for p in CGROUP_ROOT.glob(f"*/loom/{run_id}.*")}  # its jobs' cgroups (limits)
        names |= {p.name for p in CGROUP_ROOT.glob(f"loom/{run_id}.*")}
        for name in names:
            cgroup = JobCgroup(name)
            cgroup.attach_existing()
            stop_processes(cgroup.processes, 0.0)
            cgroup.remove()
        shutil.rmtree(runtime / "tmp" / run_id, ignore_errors=True)  # its secret files among them
        locks.forget(runtime, run_id)
    return dead


def _tracking_cgroups(facts: dict[str, Any]) -> list[TrackingCgroup]:
    """The run's tracking cgroups as its sidecar names them, if each name is one loom would have made
    (the sidecar is a file in the repo: a path elsewhere is never trusted to kill what is in it)."""
    where = facts.get("cgroups")
    found = []
    for item in where if isinstance(where, list) else []:
        path = Path(str(item))
        if (tracking_pid(path.name) is not None and ".." not in path.parts and path.is_relative_to(CGROUP_ROOT)
                and path.is_dir()):
            found.append(TrackingCgroup(path))
    return found


def reap_with_oneshot_writer(runtime: Path) -> list[str]:
    """For commands without a writer of their own (`loom logs`, `loom cache`)."""
    from loomrun.writer.oneshot import run_in_writer
    from loomrun.writer.runlog import mark_abandoned

    def mark(run_id: str, facts: dict[str, Any]) -> None:
        run_in_writer(lambda: _mark(mark_abandoned, runtime, run_id, facts), runtime / "receipts")

    dead = reap(runtime, mark)
    if dead and (sweeper := docker_janitor(runtime)) is not None:
        sweeper.wait(JANITOR_WAIT_S)
    return dead


def docker_janitor(runtime: Path, alive: frozenset[str] = frozenset()) -> janitor.Janitor | None:
    """After `reap` found dead runs: a janitor removing the Docker objects of every loom run whose lock
    nobody holds (those runs and any older leftovers), or None when no engine can be there. The
    caller waits for it (`Janitor.wait`); `alive` adds run ids to keep (the caller's own)."""
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return None
    keep = locks.alive_runs(runtime) | alive
    return janitor.spawn("docker leftovers", lambda: janitor.docker_reap_leftovers(keep))


def _mark(fn: Callable[[Path, str, dict[str, Any]], object], runtime: Path, run_id: str,
          facts: dict[str, Any]) -> None:
    fn(runtime, run_id, facts)


def _tagged(run_id: str) -> Callable[[], list[psutil.Process]]:
    return lambda: tagged(run_id)
