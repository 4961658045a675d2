"""Repo-root discovery and the `.loom/` layout. Runs in the `loom` process; pure path arithmetic."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from loomrun.errors import LoomError

DEFAULT_WORKFLOW = Path(".loom") / "workflow.yml"


def in_git_tree(folder: Path) -> bool:
    """Whether `folder` or a folder above it holds `.git`: git looks for a repository by the same
    walk up, so without one git need not be asked (and asking costs a process)."""
    return any(os.path.lexists(os.path.join(f, ".git")) for f in (folder, *folder.parents))


def _git_toplevel(folder: Path) -> Path | None:
    if not in_git_tree(folder):
        return None
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


def repo_root_for_workflow(workflow: Path) -> Path | None:
    """The git top level of the workflow's folder, else the nearest folder (the workflow's own or
    one above it) that holds `.loom/`. None when there is neither: such a file belongs to no repo,
    and loom never makes a `.loom/.runtime` for it (`--workflow /etc/passwd` must not create
    `/etc/.loom`)."""
    folder = workflow.resolve().parent
    top = _git_toplevel(folder)
    if top is not None:
        return top
    if folder.name == ".loom":
        return folder.parent
    return next((f for f in (folder, *folder.parents) if (f / ".loom").is_dir()), None)


def no_repo(workflow: Path) -> LoomError:
    return LoomError(f"{workflow} is in no git repository and no folder above it holds .loom/; "
                     "loom keeps receipts and logs in a repository's .loom/.runtime, so there is nowhere to keep them")


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


def resolve_workflow_path(workflow: str | None) -> tuple[Path, Path | None]:
    """(workflow path, repo root or None) for `--workflow` (or the default found from the current
    directory, which always has a root)."""
    if workflow is None:
        root = discover_repo_root()
        return root / DEFAULT_WORKFLOW, root
    path = Path(workflow).absolute()
    return path, repo_root_for_workflow(path)


def runtime_dir(repo_root: Path) -> Path:
    return repo_root / ".loom" / ".runtime"
