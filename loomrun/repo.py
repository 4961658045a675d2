"""Repo-root discovery and the `.loom/` layout. Runs in the `loom` process; pure path arithmetic."""

from __future__ import annotations

import subprocess
from pathlib import Path

from loomrun.errors import LoomError

DEFAULT_WORKFLOW = Path(".loom") / "workflow.yml"


def _git_toplevel(folder: Path) -> Path | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return Path(out.stdout.strip()).resolve()


def repo_root_for_workflow(workflow: Path) -> Path:
    """The git top level of the workflow's folder, or the folder that holds `.loom/`."""
    folder = workflow.resolve().parent
    top = _git_toplevel(folder)
    if top is not None:
        return top
    if folder.name == ".loom":
        return folder.parent
    return folder


def discover_repo_root(start: Path | None = None) -> Path:
    """From the current directory up: the first folder holding `.loom/workflow.yml`, else git top level."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / DEFAULT_WORKFLOW).exists():
            return folder
    top = _git_toplevel(here)
    if top is not None:
        return top
    raise LoomError(f"no {DEFAULT_WORKFLOW} found in {here} or any parent folder")


def resolve_workflow_path(workflow: str | None) -> tuple[Path, Path]:
    """(workflow path, repo root) for `--workflow` (or the default found from the current directory)."""
    if workflow is None:
        root = discover_repo_root()
        return root / DEFAULT_WORKFLOW, root
    path = Path(workflow).absolute()
    return path, repo_root_for_workflow(path)


def runtime_dir(repo_root: Path) -> Path:
    return repo_root / ".loom" / ".runtime"
