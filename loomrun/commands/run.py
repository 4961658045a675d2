"""`loom run`: flag checks, then the supervisor (plain run or --cache-diff). Runs in the `loom` process."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from loomrun.errors import LoomError
from loomrun.forkserver.process import ForkServer
from loomrun.repo import resolve_workflow_path
from loomrun.userfiles import read_regular

if TYPE_CHECKING:
    from loomrun.supervisor.run import RunOptions


_early: ForkServer | None = None


def start_early(argv: list[str]) -> None:
    """Called by the console script for `loom run`, before click is even imported: the fork server
    then imports the worker code (and the Docker SDK when the workflow mentions an image) while this
    process imports the CLI and loads the workflow. `--cache-diff` starts one per pass instead."""
    global _early
    if "--cache-diff" in argv or "-h" in argv or "--help" in argv:
        return
    workflow = None
    for i, arg in enumerate(argv):
        if arg == "--workflow" and i + 1 < len(argv):
            workflow = argv[i + 1]
        elif arg.startswith("--workflow="):
            workflow = arg.split("=", 1)[1]
    try:
        _early = ForkServer(preload_docker=_mentions_image(workflow))
    except OSError:
        _early = None  # `main` tries again and says why


def close_early() -> None:
    global _early
    if _early is not None:
        _early.close()
        _early = None


def main(*, local: bool, workflow: str | None, stream: bool, verbose: bool, quiet: bool, cache_diff: bool,
         docker_workspace_mount: str | None, max_jobs: int | None, only_jobs: tuple[str, ...]) -> int:
    global _early
    forks, _early = _early, None
    try:
        if not local:
            raise LoomError("--local is required (remote execution is not available)")
        if cache_diff:  # each pass is its own supervisor with its own fork server
            from loomrun.supervisor.cache_diff import run_cache_diff

            return run_cache_diff(_options(workflow, stream, verbose, quiet, cache_diff, docker_workspace_mount,
                                           max_jobs, only_jobs))
        if forks is None:
            try:
                forks = ForkServer(preload_docker=_mentions_image(workflow))
            except OSError as exc:
                raise LoomError(f"cannot start the fork server: {exc.strerror or exc}") from exc
        from loomrun.supervisor.run import run_local

        opts = _options(workflow, stream, verbose, quiet, cache_diff, docker_workspace_mount, max_jobs, only_jobs)
        return run_local(opts, forks=forks).exit_code
    finally:
        if forks is not None:
            forks.close()


def _options(workflow: str | None, stream: bool, verbose: bool, quiet: bool, cache_diff: bool,
             docker_workspace_mount: str | None, max_jobs: int | None, only_jobs: tuple[str, ...]) -> RunOptions:
    from loomrun.supervisor.run import RunOptions

    return RunOptions(workflow=workflow, stream=stream, verbose=verbose, quiet=quiet, cache_diff=cache_diff,
                      docker_workspace_mount=docker_workspace_mount, max_jobs=max_jobs,
                      only_jobs=tuple(only_jobs), command=("loom", *sys.argv[1:]))


def _mentions_image(workflow: str | None) -> bool:
    """A hint only (a wrong guess costs an import or a little time, never correctness). Read before
    click is even imported, so it must never block: a FIFO or a device is not read (`read_regular`)."""
    try:
        path, _ = resolve_workflow_path(workflow)
        return b"image" in read_regular(path, 1 << 20)
    except (LoomError, OSError):
        return False


