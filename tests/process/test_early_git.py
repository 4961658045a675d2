"""A run asks git for its facts and its file list at the start of its `load` (`GitPrefetch`), while
it loads the workflow: a run that ends before its snapshot must still leave no git process behind,
not even a zombie. The supervisor here is this test's own process (`run_local`), with a real writer
and real git processes, so that what it leaves is its children."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import git_children
from tests.process.runner import make_repo


@pytest.mark.parametrize("workflow", [
    "version: v1\nstages: [s]\njob:\n  stage: s\n  script: true\n",  # invalid: no target, a string script
    "version: v1\nstages: [s]\nworkflow:\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"nope\"\n"
    "job:\n  stage: s\n  target: linux\n  script: [\"true\"]\n",  # skipped by workflow.rules: no snapshot
], ids=["invalid", "skipped-by-rules"])
def test_a_run_that_ends_before_its_snapshot_leaves_no_git_process(tmp_path: Path, workflow: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from loomrun.supervisor.run import RunOptions, run_local
    from loomrun.supervisor.terminal import Terminal

    files = tmp_path / "repo" / "many"
    files.mkdir(parents=True)
    for i in range(3000):  # ls-files writes ~100 KB: more than its pipe holds, so it waits to be read
        (files / f"a-file-with-a-rather-long-name-{i:05d}.txt").write_bytes(b"")
    repo = make_repo(tmp_path / "repo", workflow)
    monkeypatch.chdir(repo)
    for key in [k for k in os.environ if k.startswith(("LOOM_", "CI_"))]:
        monkeypatch.delenv(key)
    result = run_local(RunOptions(workflow=str(repo / ".loom" / "workflow.yml")), Terminal(quiet=True))
    assert result.receipt_path is not None
    if "rules" in workflow:
        assert result.exit_code == 0 and result.status == "success", result.error
    else:
        assert result.exit_code == 1 and result.error is not None and "invalid workflow" in result.error
    assert git_children() == []
