"""Shell completion through click (spec §11 item 10): commands, options, job names and run ids, as
bash asks for them (`_LOOM_COMPLETE=bash_complete`), and the script a person evals, run in a real
bash. zsh and fish get their scripts from the same mechanism (`zsh_source`, `fish_source`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers import LOOM
from tests.process.runner import loom_env, make_repo, run_loom

WORKFLOW = """
    version: v1
    stages: [s]
    default:
      target: linux
    build: {stage: s, script: ["true"]}
    bench: {stage: s, script: ["true"]}
    lint: {stage: s, script: ["true"]}
"""


def complete(repo: Path, words: str, shell: str = "bash") -> list[str]:
    env = loom_env(_LOOM_COMPLETE=f"{shell}_complete", COMP_WORDS=words,
                   COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)))
    proc = subprocess.run(LOOM, cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_commands_options_jobs_and_runs_complete(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    assert complete(repo, "loom re") == ["plain,report"]
    assert set(complete(repo, "loom run --jo")) == {"plain,--jobs", "plain,--job"}
    assert complete(repo, "loom run --local --job b") == ["plain,build", "plain,bench"]
    assert complete(repo, "loom logs --job l") == ["plain,lint"]
    assert complete(repo, "loom logs --fo") == ["plain,--follow"]
    first = run_loom(repo, "run", "--local", "-q")
    second = run_loom(repo, "run", "--local", "-q")
    ids = [second.receipt["run_id"], first.receipt["run_id"]]
    assert complete(repo, "loom logs loom-run-") == [f"plain,{i}" for i in ids]
    assert complete(repo, "loom report ") == [f"plain,{i}" for i in ids]
    # outside any repo: nothing to offer, and no error
    assert complete(tmp_path, "loom run --job ") == []


def test_the_bash_script_completes_in_a_real_bash(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    loom = bin_dir / "loom"  # `loom` as a person has it on PATH: this checkout's code
    loom.write_text(f'#!/bin/sh\nexec {" ".join(LOOM)} "$@"\n')
    loom.chmod(0o755)
    env = {**loom_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    script = subprocess.run(["loom"], env={**env, "_LOOM_COMPLETE": "bash_source"}, capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert "complete " in script and "_LOOM_COMPLETE=bash_complete" in script
    session = ('eval "$(_LOOM_COMPLETE=bash_source loom)"\n'
               "COMP_WORDS=(loom run --local --job be); COMP_CWORD=4; _loom_completion loom\n"
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", session], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["bench"]
    for shell, marker in (("zsh", "compdef"), ("fish", "complete")):
        source = subprocess.run(["loom"], env={**env, "_LOOM_COMPLETE": f"{shell}_source"}, capture_output=True,
                                text=True, timeout=60, check=True).stdout
        assert marker in source and f"_LOOM_COMPLETE={shell}_complete" in source.replace('"', "")
