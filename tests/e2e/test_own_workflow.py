"""This repository's own `.loom/workflow.yml` (issue 13, "done when"): `loom check` and
`loom run --list` on it, and a real run of its `lint` job in a real pseudo-terminal. Only `lint`
runs: `unit` and `integration` run the test suite, which must not start itself from inside itself.
The run works on a copy of the source tree, so nothing is written into the checkout."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.ptyrun import run_in_pty, screen_of
from tests.e2e.run_helpers import normal, summary_block
from tests.e2e.test_terminal import COUNTS
from tests.process.runner import loom_env, run_loom

ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".runtime", "__pycache__", ".mypy_cache", ".ruff_cache",
                                    ".pytest_cache", ".hypothesis", "*.egg-info", "build", "dist")


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("own") / "loomrun"
    shutil.copytree(ROOT, copy, ignore=NOT_SOURCE)
    return copy


def tools_env() -> dict[str, str]:
    """The workflow calls `ruff` and `mypy` by name, as from an activated venv (its header says so)."""
    return loom_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def test_check_and_list_accept_the_repos_own_workflow(own: Path) -> None:
    check = run_loom(own, "check", env=tools_env())
    assert check.code == 0, check.stderr
    assert check.stderr.splitlines()[0] == "loom check passed"
    listed = run_loom(own, "run", "--list", env=tools_env())
    assert listed.code == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "stage  job          provider  needs",
        "check  lint         host      -",
        "check  types        host      -",
        "test   unit         host      lint",
        "test   integration  host      unit",
    ]
    only = run_loom(own, "run", "--list", "--job", "lint", "--no-deps", env=tools_env())
    assert only.stdout.splitlines()[1:] == ["check  lint  host      -"]


def test_the_repos_lint_job_in_a_real_terminal(own: Path) -> None:
    run = run_in_pty(["run", "--local", "--job", "lint", "--no-deps"], own, env=tools_env(), timeout=300)
    assert run.code == 0, run.raw.decode()
    text = run.raw.decode()
    # the live region was drawn: its counts line, for the one job of the run
    counts = [tuple(map(int, m.groups())) for m in COUNTS.finditer(text)]
    assert counts, text
    assert all(sum(c) == 1 for c in counts), counts  # running + passed + failed + pending
    screen = screen_of(run.raw)
    assert not any(COUNTS.search(line) for line in screen), screen  # and is gone at the end
    assert normal(screen[: screen.index("")]) == ['job "lint" passed in N.NNs']
    table = summary_block(screen)
    assert normal(table[1:-1]) == [
        "job   stage  provider  status  duration  failure",
        "lint  check  host      passed     N.NNs",
    ]
    assert re.fullmatch(r"wall time \d+\.\d\ds; critical path: lint \(\d+\.\d\ds\)", table[-1]), table
    assert screen[-2] == "loom run passed" and screen[-1].startswith("receipt: ")
