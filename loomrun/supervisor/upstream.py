"""`loom run --job NAME --no-deps` (spec §11): the artifacts of the jobs the named ones depend on
come from the newest earlier run that produced them. Runs in the supervisor; reads the logs of
earlier runs, never writes them (the worker copies from there into its workspace).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from loomrun.errors import LoomError
from loomrun.workflow.model import Job


def upstream_jobs(jobs: Sequence[Job], keep: set[str], deps: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """(upstream, needed by) for every dependency left out of the run that declares artifacts."""
    declares = {j.name for j in jobs if j.artifacts is not None and j.artifacts.paths}
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for job in jobs:
        if job.name not in keep:
            continue
        for up in deps.get(job.name, ()):
            if up not in keep and up in declares and up not in seen:
                seen.add(up)
                out.append((up, job.name))
    return out


def newest_artifacts(logs: Path, job: str, before: str) -> tuple[str, Path] | None:
    """(run id, folder) of the newest run older than `before` whose logs hold artifacts of `job`."""
    if not logs.is_dir():
        return None
    runs = [p for p in logs.iterdir() if p.name.startswith("loom-run-") and p.name != before]
    for run in sorted(runs, key=_ns, reverse=True):
        folder = run / "jobs" / job / "artifacts"
        if folder.is_dir() and any(folder.iterdir()):
            return run.name, folder
    return None


def restore_plan(jobs: Sequence[Job], keep: set[str], deps: Mapping[str, Sequence[str]], logs: Path,
                 run_id: str) -> dict[str, tuple[str, Path]]:
    """upstream job -> (run id, artifacts folder); a `LoomError` names the first one no run produced."""
    plan: dict[str, tuple[str, Path]] = {}
    for up, needed_by in upstream_jobs(jobs, keep, deps):
        found = newest_artifacts(logs, up, run_id)
        if found is None:
            raise LoomError(f'--no-deps: no earlier run produced the artifacts of job "{up}", which job '
                            f'"{needed_by}" needs (run it once: loom run --local --job {up})')
        plan[up] = found
    return plan


def _ns(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[-1])
    except ValueError:
        return 0
