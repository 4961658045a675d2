"""Shared fixtures for every test. Runs in the pytest process.

The leftover checks (processes, Docker objects, temp files) and the CI=true skip-is-failure rule
live in the `tests.leakcheck` plugin, enabled here for the whole suite.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import helpers

pytest_plugins = ["pytester", "tests.leakcheck"]


@dataclass(frozen=True)
class Repo:
    """A git repo in tmp_path holding `.loom/` (nothing committed yet)."""

    root: Path

    def write_workflow(self, text: str, name: str = "workflow.yml") -> Path:
        return helpers.write_workflow(self.root, text, name)

    def write(self, files: Mapping[str, str | bytes]) -> None:
        helpers.write_files(self.root, files)

    def git(self, *args: str) -> str:
        return helpers.git(self.root, *args)

    def commit(self, message: str = "commit") -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    @property
    def runtime(self) -> Path:
        return self.root / ".loom" / ".runtime"


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    root = helpers.init_repo(tmp_path / "repo")
    (root / ".loom").mkdir()
    return Repo(root)


RunLoom = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_loom() -> RunLoom:
    """`run_loom(args, cwd, env=None, timeout=120)`: the real `python -m loomrun` as a subprocess."""

    def run(args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return helpers.run_loom(args, cwd, env=env, timeout=timeout)

    return run


@pytest.fixture
def workflow() -> Callable[..., str]:
    """`workflow({"build": {"script": ["true"]}}, stages=("ci",))` -> schema-v1 text."""
    return helpers.workflow
