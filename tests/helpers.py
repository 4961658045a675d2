"""Plain helpers shared by tests (no fixtures here; tests/conftest.py wraps some of them).

Runs in the pytest process: real git repos, the real `loom` command as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

LOOM = [sys.executable, "-m", "loomrun"]

# Identity and defaults passed on the command line, so a fresh machine without ~/.gitconfig works
# and a developer's own config (hooks, signing, default branch) cannot change a test's outcome.
_GIT_CONFIG = ("-c", "user.name=loom-test", "-c", "user.email=loom-test@example.invalid",
               "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null",
               "-c", "gc.auto=0")


def git(cwd: Path, *args: str) -> str:
    """Run git in `cwd`; return stdout; fail loudly with git's stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    out = subprocess.run(["git", *_GIT_CONFIG, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    if out.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed in {cwd}:\n{out.stderr}")
    return out.stdout


def run_python(code: str, cwd: Path, env: Mapping[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter (this one's) in `cwd`; the test fails with its stderr unless it
    exits 0."""
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr
    return out


def git_children() -> list[str]:
    """This process's `git` children, each as "pid status" (a zombie says so)."""
    import psutil

    return [f"{p.pid} {p.status()}" for p in psutil.Process().children() if p.name() == "git"]


def init_repo(path: Path, files: Mapping[str, str] | None = None, commit: bool = True) -> Path:
    """A git repo at `path` holding `files` (relative path -> text), committed when `commit`."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    write_files(path, files or {})
    if commit and files:
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "initial")
    return path


def write_files(root: Path, files: Mapping[str, str | bytes]) -> None:
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


def write_workflow(repo: Path, text: str, name: str = "workflow.yml") -> Path:
    """Write `.loom/<name>` (dedented) and return its path."""
    path = repo / ".loom" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def run_loom(args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m loomrun *args` in `cwd` with the test environment plus `env`; text output captured."""
    # A jobserver in MAKEFLAGS (the suite run by make, or as a loom job) would lend its slots to the run.
    outside = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    full_env = {**outside, **(env or {})}
    return subprocess.run([*LOOM, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def workflow(jobs: Mapping[str, Mapping[str, object]], stages: Sequence[str] = ("ci",),
             variables: Mapping[str, str] | None = None) -> str:
    """A schema-v1 workflow text from plain data; each job defaults to `stage` = the first stage and
    `target: linux`. Values are emitted as JSON, which is valid YAML (no anchors, no tags)."""
    import json

    lines = ["version: v1", f"stages: {json.dumps(list(stages))}"]
    if variables:
        lines.append(f"variables: {json.dumps(dict(variables))}")
    for name, spec in jobs.items():
        body = {"stage": stages[0], "target": "linux", **spec}
        lines.append(f"{name}: {json.dumps(body)}")
    return "\n".join(lines) + "\n"


def tree(root: Path) -> dict[str, tuple[str, str | bytes, int]]:
    """Every file and symlink under `root` (not `.git`), as rel path -> (kind, content or target, mode).

    Folders appear only through the paths below them (git does not track empty folders)."""
    found: dict[str, tuple[str, str | bytes, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git" or Path(dirpath) != root]
        for name in [*filenames, *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if os.path.islink(full):
                found[rel] = ("link", os.readlink(full), 0)
            else:
                found[rel] = ("file", Path(full).read_bytes(), st.st_mode & 0o7777)
    return found
