"""`loom run`: flag checks, then the supervisor (plain run or --cache-diff). Runs in the `loom` process."""

from __future__ import annotations

import sys

from loomrun.errors import LoomError


def main(*, local: bool, workflow: str | None, stream: bool, verbose: bool, quiet: bool, cache_diff: bool,
         docker_workspace_mount: str | None, max_jobs: int | None, only_jobs: tuple[str, ...]) -> int:
    if not local:
        raise LoomError("--local is required (remote execution is not available)")
    from loomrun.supervisor.run import RunOptions, run_local

    opts = RunOptions(workflow=workflow, stream=stream, verbose=verbose, quiet=quiet, cache_diff=cache_diff,
                      docker_workspace_mount=docker_workspace_mount, max_jobs=max_jobs,
                      only_jobs=tuple(only_jobs), command=("loom", *sys.argv[1:]))
    if cache_diff:
        from loomrun.supervisor.cache_diff import run_cache_diff

        return run_cache_diff(opts)
    return run_local(opts).exit_code


