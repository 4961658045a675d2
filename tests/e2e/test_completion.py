"""Shell completion through click (spec §11 item 10): commands, options, job names and run ids, as
bash asks for them (`_LOOM_COMPLETE=bash_complete`), and the script a person evals, run in the real
shell it is for: bash, fish (`complete -C`, fish's own way to ask for completions) and an interactive
zsh in a tmux pane, where Tab is pressed as a person does."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

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


def _loom_on_path(tmp_path: Path) -> dict[str, str]:
    """The environment of a person who has `loom` (this checkout's code) on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    loom = bin_dir / "loom"
    loom.write_text(f'#!/bin/sh\nexec {" ".join(LOOM)} "$@"\n')
    loom.chmod(0o755)
    return {**loom_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _needs(shell: str) -> None:
    if shutil.which(shell) is None:  # a laptop without it; scripts/test.sh installs it (CI=true: a failure)
        pytest.skip(f"{shell} is not installed (scripts/test.sh installs it)")


def test_the_fish_script_completes_in_a_real_fish(tmp_path: Path) -> None:
    _needs("fish")
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    env = _loom_on_path(tmp_path)

    def fish(line: str) -> list[str]:
        session = f"_LOOM_COMPLETE=fish_source loom | source; complete -C {shlex.quote(line)}"
        out = subprocess.run(["fish", "--no-config", "-c", session], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [row.split("\t")[0] for row in out.stdout.splitlines()]

    assert sorted(fish("loom run --local --job b")) == ["bench", "build"]
    assert fish("loom logs --fo") == ["--follow"]
    assert "report" in fish("loom re")


def test_the_zsh_script_completes_on_tab_in_an_interactive_zsh(tmp_path: Path) -> None:
    _needs("zsh")
    _needs("tmux")
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    env = _loom_on_path(tmp_path)
    home = tmp_path / "zdotdir"  # the .zshrc a person writes, per the README
    home.mkdir()
    (home / ".zshrc").write_text('autoload -Uz compinit && compinit -u -D\neval "$(_LOOM_COMPLETE=zsh_source loom)"\n'
                                 "PS1='%% '\n")
    env = {**env, "ZDOTDIR": str(home), "TERM": "xterm-256color"}
    tmux = ["tmux", "-L", f"loom-zsh-{os.getpid()}-{time.monotonic_ns()}", "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "30", "-c", str(repo), "zsh", "-i"], env=env,
                   check=True)

    def lines() -> list[str]:
        screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=True).stdout
        return [line.rstrip() for line in screen.splitlines()]

    def wait_for(line: str) -> list[str]:
        deadline = time.monotonic() + 60
        while line not in (screen := lines()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return screen

    def tab(keys: str, expected: str) -> None:
        subprocess.run([*tmux, "send-keys", "C-u"], check=True)
        subprocess.run([*tmux, "send-keys", "-l", keys], check=True)
        assert f"% {keys}" in wait_for(f"% {keys}")  # typed at the prompt, before the Tab
        subprocess.run([*tmux, "send-keys", "Tab"], check=True)
        screen = wait_for(f"% {expected}")
        assert f"% {expected}" in screen, "\n".join(screen)

    try:
        assert "%" in wait_for("%"), "zsh never showed its prompt"
        tab("loom logs --job l", "loom logs --job lint")
        tab("loom logs --fo", "loom logs --follow")
        tab("loom rep", "loom report")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
