"""The `loom` command line. Runs in the `loom` process.

Thin on purpose: parse flags with click, call the command module (imported lazily, so `loom check`
never pays for `loom run`'s imports), map `LoomError` to one stderr line and an exit code.
Human output goes to stderr; stdout carries data only (compile, config show, version, logs).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from loomrun import __version__
from loomrun.errors import ExitCode, LoomError


def _invoke(prefix: str, fn: Callable[[], int]) -> NoReturn:
    """Run a command body; every outcome ends in an exit code, never a traceback."""
    try:
        code = fn()
    except LoomError as exc:
        click.echo(f"{prefix}: {exc.message}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo(f"{prefix}: interrupted", err=True)
        code = ExitCode.SIGINT
    except OSError as exc:
        click.echo(f"{prefix}: {_os_error_line(exc)}", err=True)
        code = ExitCode.FAILED
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if os.environ.get("LOOM_DEBUG"):
            raise
        click.echo(f"{prefix}: internal error: {type(exc).__name__}: {exc}", err=True)
        code = ExitCode.FAILED
    sys.exit(int(code))


def _os_error_line(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


# Shell completion (`eval "$(_LOOM_COMPLETE=bash_source loom)"`, zsh_source, fish_source): click
# completes commands and options; these complete values. A completion never fails: no answer instead.
def _complete_jobs(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """The workflow's job names (the --workflow given on the line, else the repo's)."""
    try:
        from loomrun.repo import resolve_workflow_path
        from loomrun.workflow.resolve import load_workflow

        path, root = resolve_workflow_path(ctx.params.get("workflow"))
        return [job.name for job in load_workflow(path, root).jobs if job.name.startswith(incomplete)]
    except Exception:
        return []


def _complete_runs(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Run ids that have a receipt, newest first."""
    try:
        from loomrun.commands.logs import find_runtime

        receipts = find_runtime() / "receipts"
        runs = sorted(receipts.glob("loom-run-local-*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[-1]))
        return [p.stem for p in reversed(runs) if p.stem.startswith(incomplete)]
    except Exception:
        return []


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="loom", message="%(prog)s %(version)s")
def cli() -> None:
    """loom: run CI workflows locally, each job in its own worker process."""


@cli.command()
def version() -> None:
    """Print the loom version."""
    click.echo(f"loom {__version__}")


@cli.command()
@click.option("--local", "local", is_flag=True, help="Run on this machine.")
@click.option("--remote", "remote", is_flag=False, flag_value="", default=None, metavar="ADDRESS",
              help="Run the jobs on a Ray cluster (default address: RAY_ADDRESS, then remote.ray.address).")
@click.option("--workflow", "workflow", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Workflow file (default .loom/workflow.yml).")
@click.option("--stream", is_flag=True, help="Stream each job's output live, prefixed with the job name.")
@click.option("-v", "--verbose", is_flag=True, help="Print run id, logs dir, workspace, provider, cache hits.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the receipt path and the final status line.")
@click.option("--cache-diff", is_flag=True, help="Run twice (cache off, then on) and quarantine diverging keys.")
@click.option("--docker-workspace-mount", type=click.Choice(["bind_mount", "ephemeral_volume"]), default=None,
              help="How Docker jobs see the workspace (default ephemeral_volume).")
@click.option("-j", "--jobs", "max_jobs", type=click.IntRange(min=1), default=None,
              help="Maximum jobs running at once (default: number of CPUs).")
@click.option("--job", "only_jobs", multiple=True, shell_complete=_complete_jobs,
              help="Run only this job and what it needs (repeatable).")
@click.option("--no-deps", is_flag=True,
              help="With --job: run exactly those jobs; upstream artifacts come from the newest run that made them.")
@click.option("--list", "list_jobs", is_flag=True, help="Print the jobs a run would start, and exit.")
def run(**kwargs: Any) -> None:
    """Run the workflow: on this machine (--local) or on a Ray cluster (--remote)."""
    if kwargs["local"] and kwargs["remote"] is not None:
        raise click.UsageError("--local and --remote are mutually exclusive")
    if kwargs["no_deps"] and not kwargs["only_jobs"]:
        raise click.UsageError("--no-deps needs --job NAME")
    from loomrun.commands import run as run_cmd

    _invoke("loom run", lambda: run_cmd.main(**kwargs))


@cli.command()
@click.option("--workflow", "workflow", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Workflow file (default .loom/workflow.yml).")
def check(workflow: str | None) -> None:
    """Validate the workflow against schema v1 and list every error."""
    from loomrun.commands import check as check_cmd

    _invoke("loom check", lambda: check_cmd.main(workflow))


@cli.command("compile")
@click.option("--workflow", "workflow", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Workflow file (default .loom/workflow.yml).")
def compile_(workflow: str | None) -> None:
    """Print the workflow's Graph IR as JSON on stdout."""
    from loomrun.commands import compile as compile_cmd

    _invoke("loom compile", lambda: compile_cmd.main(workflow))


@cli.group()
def config() -> None:
    """Runtime configuration (.loom/config.yml, ~/.config/loom/config.yml)."""


@config.command("init")
@click.option("--user", is_flag=True, help="Write ~/.config/loom/config.yml instead of .loom/config.yml.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def config_init(user: bool, force: bool) -> None:
    """Write a commented starter config."""
    from loomrun.commands import config as config_cmd

    _invoke("loom config init", lambda: config_cmd.init(user=user, force=force))


@config.command("show")
def config_show() -> None:
    """Print the effective runtime config and the layer each value came from."""
    from loomrun.commands import config as config_cmd

    _invoke("loom config show", config_cmd.show)


@cli.command()
@click.argument("run_id", required=False, shell_complete=_complete_runs)
@click.option("--job", "job", default=None, shell_complete=_complete_jobs,
              help="Print this job's output instead of the failing job's.")
@click.option("--step", "step", type=click.IntRange(min=1), default=None, help="Only step N (1-based).")
@click.option("--follow", is_flag=True, help="Tail a run still going (default: the newest) until it ends.")
def logs(run_id: str | None, job: str | None, step: int | None, follow: bool) -> None:
    """Print the failing job's output, step by step, of the newest (or given) run."""
    from loomrun.commands import logs as logs_cmd

    _invoke("loom logs", lambda: logs_cmd.main(run_id, job, step, follow))


@cli.command()
@click.argument("run_id", required=False, shell_complete=_complete_runs)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Write here (default .loom/.runtime/reports/<run_id>.html).")
def report(run_id: str | None, output: str | None) -> None:
    """Write one self-contained HTML report of the newest (or given) run; print its path."""
    from loomrun.commands import report as report_cmd

    _invoke("loom report", lambda: report_cmd.main(run_id, output))


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
def gc(dry_run: bool) -> None:
    """Remove old runs' logs, receipts and snapshots, and evict cache entries past the size bound."""
    from loomrun.commands import gc as gc_cmd

    _invoke("loom gc", lambda: gc_cmd.main(dry_run))


@cli.group()
def cache() -> None:
    """Inspect the cache store and the quarantine list."""


@cache.command("list")
def cache_list() -> None:
    """List cache entries."""
    from loomrun.commands import cache as cache_cmd

    _invoke("loom cache list", cache_cmd.list_entries)


@cache.command("clear")
@click.argument("key", required=False)
def cache_clear(key: str | None) -> None:
    """Remove one cache entry, or all of them."""
    from loomrun.commands import cache as cache_cmd

    _invoke("loom cache clear", lambda: cache_cmd.clear(key))


@cache.command("quarantine")
def cache_quarantine() -> None:
    """List quarantined keys with their evidence."""
    from loomrun.commands import cache as cache_cmd

    _invoke("loom cache quarantine", cache_cmd.quarantine)


@cache.command("release")
@click.argument("key")
def cache_release(key: str) -> None:
    """Release a quarantined key so it can be restored again."""
    from loomrun.commands import cache as cache_cmd

    _invoke("loom cache release", lambda: cache_cmd.release(key))


class _LazyGroup(click.Group):
    """A group whose subcommands are defined in `module` and built on first use: defining the
    `loom secrets` tree cost every `loom` command ~1 ms at start-up."""

    def __init__(self, name: str, module: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.module = module

    def _real(self) -> click.Group:
        import importlib

        group: click.Group = importlib.import_module(self.module).group
        return group

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._real().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._real().get_command(ctx, cmd_name)


cli.add_command(_LazyGroup("secrets", "loomrun.commands.secrets_cli",
                           help="Manage KeePass vaults and 1Password items (values only from variables, never "
                                "printed)."))


def main() -> None:
    cli(prog_name="loom")
