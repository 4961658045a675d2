"""`loom run`: flag checks, then the supervisor (plain run or --cache-diff). Runs in the `loom` process."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from loomrun.errors import LoomError
from loomrun.forkserver.process import ForkServer
from loomrun.repo import resolve_workflow_path
from loomrun.userfiles import read_regular

if TYPE_CHECKING:
    from loomrun.remote.handle import Gateway
    from loomrun.supervisor.run import RunOptions


_early: ForkServer | None = None
_early_gateway: Gateway | None = None
_taken: ForkServer | None = None  # the early fork server once `main` has it: ^C before the run's own
# signal handlers are in place still ends it (with its tracking cgroup): see `_entry._quiet_exit`


def start_early(argv: list[str]) -> None:
    """Called by the console script for `loom run`, before click is even imported: the fork server
    then imports the worker code (and the Docker SDK when the workflow mentions an image) while this
    process imports the CLI and loads the workflow. `--cache-diff` starts one per pass instead."""
    global _early, _early_gateway
    if "--cache-diff" in argv or "--list" in argv or "-h" in argv or "--help" in argv:
        return
    remote = any(a == "--remote" or a.startswith("--remote=") for a in argv) and "--local" not in argv
    if remote:  # the gateway imports Ray (~0.5 s) and joins the cluster while this process goes on (spec §12)
        from loomrun.remote.handle import Gateway

        try:
            _early_gateway = Gateway.start(_early_address(argv))
        except OSError:
            _early_gateway = None
    workflow = None
    for i, arg in enumerate(argv):
        if arg == "--workflow" and i + 1 < len(argv):
            workflow = argv[i + 1]
        elif arg.startswith("--workflow="):
            workflow = arg.split("=", 1)[1]
    try:
        _early = ForkServer(preload_docker=not remote and _mentions_image(workflow), preload_remote=remote)
    except OSError:
        _early = None  # `main` tries again and says why


def _early_address(argv: list[str]) -> str | None:
    """The address given with `--remote` on the command line, if one is (a hint: `main` decides)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--remote="):
            return arg.split("=", 1)[1] or None
        if arg == "--remote" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            return argv[i + 1]
    return None


def close_early() -> None:
    global _early, _early_gateway, _taken
    for forks in (_early, _taken):
        if forks is not None:
            forks.close()
    _early = _taken = None
    if _early_gateway is not None:  # a usage error, --help: no run, nothing to wait for
        _early_gateway.close(wait_s=0.5)
        _early_gateway = None


def main(*, local: bool, remote: str | None, workflow: str | None, stream: bool, verbose: bool, quiet: bool,
         cache_diff: bool, docker_workspace_mount: str | None, max_jobs: int | None,
         only_jobs: tuple[str, ...], list_jobs: bool = False, no_deps: bool = False) -> int:
    global _early, _early_gateway, _taken
    forks = _taken = _early
    _early = None
    gateway, _early_gateway = _early_gateway, None
    try:
        if list_jobs:  # nothing runs: --local is not needed
            return list_runnable(_options(workflow, stream, verbose, quiet, cache_diff, docker_workspace_mount,
                                          max_jobs, only_jobs, no_deps))
        if not local and remote is None:
            raise LoomError("--local or --remote ADDRESS is required")
        address = None if remote is None else ray_address(remote, workflow)
        opts = _options(workflow, stream, verbose, quiet, cache_diff, docker_workspace_mount, max_jobs, only_jobs,
                        no_deps, address)
        if cache_diff:  # each pass is its own supervisor with its own fork server (and gateway)
            from loomrun.supervisor.cache_diff import run_cache_diff

            return run_cache_diff(opts)
        if forks is None:
            try:
                forks = _taken = ForkServer(preload_docker=address is None and _mentions_image(workflow),
                                            preload_remote=address is not None)
            except OSError as exc:
                raise LoomError(f"cannot start the fork server: {exc.strerror or exc}") from exc
        from loomrun.supervisor.run import run_local

        result = run_local(opts, forks=forks, gateway=gateway)
        gateway = None  # the run closed it
        return result.exit_code
    finally:
        _taken = None
        if forks is not None:
            forks.close()
        if gateway is not None:  # no run took it (a bad address, a config error)
            gateway.close(wait_s=0.5)


def ray_address(flag: str, workflow: str | None) -> str:
    """The cluster of `--remote`: its value, else `RAY_ADDRESS`, else `remote.ray.address` of the
    runtime config (spec §8, §12)."""
    from loomrun.config import load_runtime_config, refuse_ray_client

    if flag:
        refuse_ray_client(flag, "--remote")
        return flag
    if os.environ.get("RAY_ADDRESS"):
        refuse_ray_client(os.environ["RAY_ADDRESS"], "RAY_ADDRESS")
        return os.environ["RAY_ADDRESS"]
    _, root = resolve_workflow_path(workflow)
    address = load_runtime_config(root).ray_address if root is not None else None  # no repo: the run says why
    if address:
        return address
    raise LoomError("--remote needs an address: give one, or set RAY_ADDRESS or remote.ray.address in the "
                    "runtime config")


def _options(workflow: str | None, stream: bool, verbose: bool, quiet: bool, cache_diff: bool,
             docker_workspace_mount: str | None, max_jobs: int | None, only_jobs: tuple[str, ...],
             no_deps: bool = False, remote: str | None = None) -> RunOptions:
    from loomrun.supervisor.run import RunOptions

    return RunOptions(workflow=workflow, stream=stream, verbose=verbose, quiet=quiet, cache_diff=cache_diff,
                      docker_workspace_mount=docker_workspace_mount, max_jobs=max_jobs,
                      only_jobs=tuple(only_jobs), no_deps=no_deps, command=("loom", *sys.argv[1:]), remote=remote)


def list_runnable(opts: RunOptions) -> int:
    """`loom run --list`: the jobs a run would start (after workflow.rules, --job and --no-deps) as a
    table on stdout: stage, job, provider, needs. Nothing runs and nothing is written."""
    from loomrun.supervisor.run import Run
    from loomrun.supervisor.run import _Failed as RunFailed  # a run that cannot start: one line
    from loomrun.supervisor.terminal import Terminal
    from loomrun.workflow.errors import WorkflowInvalid, format_diagnostic
    from loomrun.workflow.resolve import load_workflow

    run = Run(opts, Terminal(quiet=True))
    try:
        wf = load_workflow(run.workflow_path, run.repo_root)
        jobs = run.configure(wf, listing=True)
    except WorkflowInvalid as exc:
        for diag in exc.diagnostics:
            print(format_diagnostic(diag), file=sys.stderr)
        raise LoomError(exc.message) from exc
    except RunFailed as exc:
        raise LoomError(exc.message) from exc
    if not jobs:
        print("no jobs to run" + (" (pipeline skipped by workflow.rules)" if wf.jobs else ""), file=sys.stderr)
        return 0
    stage_of = {j.name: j.stage for j in wf.jobs}
    rows = [("stage", "job", "provider", "needs")]
    for job in jobs:
        if job.needs is not None:
            needs = ", ".join(job.needs) or "-"
        else:  # every job of the stages before
            before = wf.stages[: wf.stages.index(job.stage)]
            used = [st for st in before if st in stage_of.values()]
            needs = f"(stage{'s' if len(used) > 1 else ''} {', '.join(used)})" if used else "-"
        rows.append((job.stage, job.name, job.provider, needs))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3])
    return 0


def _mentions_image(workflow: str | None) -> bool:
    """A hint only (a wrong guess costs an import or a little time, never correctness). Read before
    click is even imported, so it must never block: a FIFO or a device is not read (`read_regular`)."""
    try:
        path, _ = resolve_workflow_path(workflow)
        return b"image" in read_regular(path, 1 << 20)
    except (LoomError, OSError):
        return False


