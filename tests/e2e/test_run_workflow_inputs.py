"""`loom run --local` on hostile or unusual workflow inputs (issue 11 items 7, 9, 11, 12, 18, 19, 20):
expansion bombs, FIFOs, files that are not workflows, huge values, expansion in paths and keys,
`workflow.rules` on predefined variables, a bad runtime config. Real `loom` processes, real files,
real git."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.process.runner import LOOM, load, loom_env, make_repo, run_loom

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def _bomb(count: int = 40) -> str:
    return "".join(f"    V{i}: $V{i - 1}$V{i - 1}\n" for i in range(1, count + 1))


def _peak_rss_kib(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `cmd`, and read the peak RSS of it and its waited-for children (the kernel's own count)."""
    code = ("import resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)\n"
            "sys.stderr.write(p.stderr); sys.stdout.write(p.stdout)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(p.returncode)\n")
    out = subprocess.run([sys.executable, "-c", code, *cmd], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=180, check=False)
    *lines, peak = out.stderr.splitlines()
    return subprocess.CompletedProcess(cmd, out.returncode, out.stdout, "\n".join(lines) + "\n"), int(peak)


def test_an_expansion_bomb_fails_the_run_at_once_with_its_line(tmp_path: Path) -> None:
    """Forty variables that each double the one before: the run stops before anything starts, with
    the line of the first that passes the bound, in bounded memory, and writes a receipt."""
    head = "version: v1\nstages: [s]\nx:\n  stage: s\n  target: linux\n  script: [echo never]\n  variables:\n"
    repo = make_repo(tmp_path / "repo", head + "    V0: '0123456789'\n" + _bomb())
    result, peak_kib = _peak_rss_kib([*LOOM, "run", "--local"], repo, loom_env())
    assert result.returncode == 1, result.stderr
    assert peak_kib < 200 * 1024  # the supervisor, writer and fork server; no 2^40 anything
    lines = result.stderr.splitlines()
    assert lines[0] == ('workflow.yml:22 variable "V14" expands to more than 128 KiB, the most one environment '
                        "variable may hold (the kernel's MAX_ARG_STRLEN)")
    receipt = json.loads(Path(lines[-2][len("receipt: "):]).read_text())
    assert receipt["status"] == "failure" and receipt["workflow_errors"][0]["line"] == 22
    assert not (Path(receipt["logs_dir"]) / "jobs" / "x").exists()


def test_a_host_variable_that_grows_from_the_caller_environment_fails_the_run_in_one_line(tmp_path: Path) -> None:
    """`loom check` cannot know the caller's values; the run expands again with them, under the same
    bound, and says which job and variable, instead of a job that ends with "exit code None"."""
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        x:
          stage: s
          target: linux
          script: [echo never]
          variables:
            TWICE: $BIG$BIG
    """)
    check = run_loom(repo, "check")
    assert check.code == 0, check.stderr
    result = run_loom(repo, "run", "--local", env=loom_env(BIG="b" * 100_000))
    assert result.code == 1
    error = ('job "x": variable "TWICE" expands to more than 128 KiB, the most one environment variable may hold '
             "(the kernel's MAX_ARG_STRLEN)")
    assert result.stderr.splitlines()[-1] == f"loom run: {error}"
    assert result.receipt["error"] == error
    assert not (result.logs_dir / "jobs" / "x").exists()


def test_a_fifo_as_the_workflow_fails_the_run_at_once(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".loom").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    os.mkfifo(repo / ".loom" / "workflow.yml")
    result = run_loom(repo, "run", "--local", timeout=60)  # on the code before, it hung on the open
    assert result.code == 1
    line = f"workflow.yml: cannot read {repo / '.loom' / 'workflow.yml'}: not a regular file (a FIFO)"
    assert line in result.stderr.splitlines()
    assert result.receipt["status"] == "failure"


def test_a_fifo_or_device_given_as_workflow_is_refused_at_once(tmp_path: Path) -> None:
    """`--workflow` naming a FIFO (in a repo, or in no repo) or a device: one line saying what the
    file is, exit 1, nothing opened (a FIFO without a writer would block the open for ever, which
    `run_loom`'s timeout turns into a failure), and no `.loom/.runtime` where there is no repo."""
    repo = tmp_path / "repo"
    (repo / ".loom").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    os.mkfifo(repo / "pipe.yml")
    lone = tmp_path / "lone"
    lone.mkdir()
    os.mkfifo(lone / "pipe.yml")
    in_repo = run_loom(tmp_path, "run", "--local", "--workflow", str(repo / "pipe.yml"), timeout=60)
    assert in_repo.code == 1
    line = f"pipe.yml: cannot read {repo / 'pipe.yml'}: not a regular file (a FIFO)"
    assert in_repo.stderr.splitlines()[0] == line
    assert in_repo.stderr.splitlines()[-1] == f"loom run: invalid workflow: {line}"
    assert in_repo.receipt["status"] == "failure"  # the repo has a place for it
    assert not any(log.name == "jobs" for log in in_repo.logs_dir.iterdir())
    for cwd, path, kind in ((tmp_path, lone / "pipe.yml", "a FIFO"), (repo, Path("/dev/null"), "a character device"),
                            (repo, Path("/dev/zero"), "a character device"),
                            (lone, Path("/dev/zero"), "a character device")):
        out = run_loom(cwd, "run", "--local", "--workflow", str(path), timeout=60)
        assert (out.code, out.stdout) == (1, ""), out.stderr
        assert out.stderr.splitlines() == [f"loom run: {path.name}: cannot read {path}: not a regular file ({kind})"]
    assert not Path("/dev/.loom").exists()
    outside_runtime = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                       if ".git" not in p.parts and ".runtime" not in p.parts]
    assert sorted(outside_runtime) == ["lone", "lone/pipe.yml", "repo", "repo/.loom", "repo/pipe.yml"]


def test_a_workflow_outside_any_repo_makes_no_runtime_folder(tmp_path: Path) -> None:
    """`--workflow /etc/shadow` made /etc/.loom/.runtime: a file in no git repo and under no folder
    holding .loom/ is refused before anything is written."""
    lone = tmp_path / "etc"
    lone.mkdir()
    (lone / "shadow").write_text("root:$6$salt$hash:19000:0:99999:7:::\n")
    result = run_loom(tmp_path, "run", "--local", "--workflow", str(lone / "shadow"))
    assert result.code == 1
    assert result.stderr.splitlines() == [
        f"loom run: {lone / 'shadow'} is in no git repository and no folder above it holds .loom/; loom keeps "
        "receipts and logs in a repository's .loom/.runtime, so there is nowhere to keep them"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["etc", "shadow"]


def test_a_file_that_is_not_a_workflow_is_never_echoed_by_a_run(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [s]\nx: {stage: s, target: linux, script: ['true']}\n")
    (repo / "creds.txt").write_text("admin: hunter2\ntoken: s3cr3t-t0ken\n")
    (repo / "creds.ini").write_text("[db]\npassword = hunter2: [\n")
    for name in ("creds.txt", "creds.ini"):
        result = run_loom(repo, "run", "--local", "--workflow", name)
        assert result.code == 1
        receipt = result.receipt_path.read_text()
        for text in (result.stderr, receipt):
            assert "hunter2" not in text and "s3cr3t" not in text and "admin" not in text
        assert 'not a loom workflow: no top-level "version" or "stages" key' in result.stderr


def test_huge_values_are_refused_before_the_run_starts(tmp_path: Path) -> None:
    """`timeout: 600h` crashed the run with OverflowError; a variable over 128 KiB ended its job with
    "exit code None". Both are workflow errors now, with their lines, and the run says so."""
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        x:
          stage: s
          target: linux
          timeout: 600h
          script: [echo never]
        y:
          stage: s
          target: linux
          variables:
            HUGE: "%s"
          script: [echo never]
    """ % ("h" * 140_000))
    result = run_loom(repo, "run", "--local")
    assert result.code == 1
    assert "Traceback" not in result.stderr and "OverflowError" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        'workflow.yml:6 invalid "timeout": 600h is longer than the most loom can wait (24d)',
        'workflow.yml:12 variable "HUGE" expands to more than 128 KiB, the most one environment variable may '
        "hold (the kernel's MAX_ARG_STRLEN)"]
    assert [e["line"] for e in result.receipt["workflow_errors"]] == [6, 12]


def test_variables_that_together_pass_arg_max_fail_the_run_with_the_cause(tmp_path: Path) -> None:
    """Each under 128 KiB, twenty of them over the kernel's ARG_MAX: execve would fail with E2BIG and
    the job end with "exit code None". The run names the job and the cause instead."""
    big = "".join(f"    V{i}: {'v' * 120_000}\n" for i in range(20))
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [s]\nx:\n  stage: s\n  target: linux\n"
                     "  script: [echo never]\n  variables:\n" + big)
    result = run_loom(repo, "run", "--local")
    assert result.code == 1
    assert result.receipt["error"].startswith('job "x": its variables and the caller\'s environment come to ')
    assert result.receipt["error"].endswith("(ARG_MAX less room for a step)")
    assert not (result.logs_dir / "jobs" / "x").exists()


def test_an_include_that_links_outside_the_repo_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.yml"
    outside.write_text(".evil:\n  script: [curl evil.example]\n")
    repo = tmp_path / "repo"
    (repo / ".loom" / "templates").mkdir(parents=True)
    (repo / ".loom" / "templates" / "base.yml").symlink_to(outside)
    make_repo(repo, """
        version: v1
        stages: [s]
        include:
          - local: .loom/templates/base.yml
        x:
          stage: s
          target: linux
          extends: .evil
    """)
    result = run_loom(repo, "run", "--local")
    assert result.code == 1
    assert result.stderr.splitlines()[0] == ('workflow.yml:4 include file ".loom/templates/base.yml" is a link to '
                                             "a file outside the repository")


EXPANDED = """
version: v1
stages: [s]
variables:
  OUT: $BASE/out
  BASE: build
x:
  stage: s
  target: linux
  variables:
    DEPS: $CACHE_DIR-$DEPS_VER
    DEPS_VER: v2
    CACHE_DIR: .deps
    LOCK: locks/$LOCK_NAME
    LOCK_NAME: app.lock
  cache:
    paths: [$DEPS]
    key: {prefix: deps-$DEPS_VER, files: ['${LOCK}']}
  artifacts:
    paths: [$OUT/, '$${NOT_EXPANDED}.txt']
    exclude: [$OUT/skip.txt]
  script:
    - mkdir -p build/out "$DEPS" && echo made > build/out/made.txt && echo skip > build/out/skip.txt
    - echo dollar > '${NOT_EXPANDED}.txt'
    - test -f "$DEPS/lib" && echo restored || echo fresh > "$DEPS/lib"
"""


def test_variables_expand_in_paths_and_keys_whatever_their_order(tmp_path: Path) -> None:
    """Spec §2.5: $VAR in artifacts.paths/exclude, cache.paths and cache.key.files is expanded (it was
    left as written), from variables defined after the one that uses them; `$$` is a literal `$`."""
    repo = make_repo(tmp_path / "repo", EXPANDED)
    (repo / "locks").mkdir()
    (repo / "locks" / "app.lock").write_text("lock v1\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "lock"], cwd=repo, check=True, env=GIT_ENV)
    first = run_loom(repo, "run", "--local")
    assert first.code == 0, first.stderr
    artifacts = first.logs_dir / "jobs" / "x" / "artifacts"
    assert (artifacts / "build" / "out" / "made.txt").read_text() == "made\n"
    assert not (artifacts / "build" / "out" / "skip.txt").exists()
    assert (artifacts / "${NOT_EXPANDED}.txt").read_text() == "dollar\n"
    data = b"lock v1\n"
    digest = hashlib.sha256(b"locks/app.lock\0" + str(len(data)).encode() + b"\0" + data).hexdigest()
    save = load(first.logs_dir / "jobs" / "x" / "system" / "cache_save" / "summary.json")
    assert save["caches"][0]["key"] == f"deps-v2-{digest}"
    assert save["caches"][0]["files"] == 2  # the folder .deps-v2 and its lib
    second = run_loom(repo, "run", "--local")
    assert second.code == 0, second.stderr
    assert second.step_lines("x", 3) == ["restored"]


def _tagged_clone(tmp_path: Path, branch: str) -> Path:
    origin = make_repo(tmp_path / "origin", """
        version: v1
        stages: [s]
        workflow:
          rules:
            - if: '$CI_COMMIT_BRANCH == "release" && $CI_COMMIT_TAG =~ /^v1/'
              when: always
            - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
              when: never
            - if: $CI_COMMIT_BRANCH
        show:
          stage: s
          target: linux
          script:
            - printf "%s\\n" "$CI_COMMIT_REF_NAME" "${CI_COMMIT_TAG:-none}" "$CI_DEFAULT_BRANCH"
            - printf "%s\\n" "$CI_PROJECT_NAME" "$CI_PIPELINE_SOURCE"
    """)
    subprocess.run(["git", "branch", "-qM", "trunk"], cwd=origin, check=True)
    clone = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True, capture_output=True)
    subprocess.run(["git", "checkout", "-qb", branch], cwd=clone, check=True)
    subprocess.run(["git", "tag", "-a", "v1.2", "-m", "release"], cwd=clone, check=True, env=GIT_ENV)
    return clone


def test_workflow_rules_see_the_predefined_variables(tmp_path: Path) -> None:
    """A rule on the branch decided with CI_COMMIT_BRANCH unset, so it skipped every pipeline and
    reported success. The rules see the predefined variables now."""
    clone = _tagged_clone(tmp_path, "release")
    result = run_loom(clone, "run", "--local")
    assert result.code == 0, result.stderr
    assert "skipped_reason" not in result.receipt
    assert result.step_lines("show", 1) == ["release", "v1.2", "trunk"]
    assert result.step_lines("show", 2) == ["work", "local"]


def test_a_pipeline_the_rules_skip_says_so_last(tmp_path: Path) -> None:
    clone = _tagged_clone(tmp_path, "feature")
    subprocess.run(["git", "checkout", "-q", "trunk"], cwd=clone, check=True)
    for args in ((), ("-q",)):
        result = run_loom(clone, "run", "--local", *args)
        assert result.code == 0, result.stderr
        assert result.stderr.splitlines()[-1] == \
            "loom run: pipeline skipped by workflow.rules (rule 2 matched with when: never)"
        assert result.receipt["skipped_reason"] == "workflow.rules"
        assert result.receipt["status"] == "success"
    subprocess.run(["git", "checkout", "-q", "--detach"], cwd=clone, check=True)
    detached = run_loom(clone, "run", "--local")
    assert detached.stderr.splitlines()[-1] == "loom run: pipeline skipped by workflow.rules (no rule matched)"


def test_the_process_environment_wins_over_root_variables_in_rules(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        variables: {MODE: skip}
        workflow:
          rules:
            - if: '$MODE == "go" && $CI_PROJECT_NAME == "repo"'
        x: {stage: s, target: linux, script: [echo ran]}
    """)
    assert run_loom(repo, "run", "--local").receipt.get("skipped_reason") == "workflow.rules"
    went = run_loom(repo, "run", "--local", env=loom_env(MODE="go"))
    assert went.code == 0 and went.step_lines("x", 1) == ["ran"]


def test_a_bad_runtime_config_fails_a_host_only_run(tmp_path: Path) -> None:
    """A bad .loom/config.yml was ignored when every job ran on the host."""
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        x: {stage: s, target: linux, script: [echo never]}
    """)
    (repo / ".loom" / "config.yml").write_text("runtime:\n  jobserver: sometimes\n")
    result = run_loom(repo, "run", "--local", env=loom_env(HOME=str(tmp_path / "home")))
    assert result.code == 1
    error = (f'{repo / ".loom" / "config.yml"}: invalid "runtime.jobserver" \'sometimes\'; expected "on", "off" '
             'or "fifo:/absolute/path"')
    assert result.stderr.splitlines()[-1] == f"loom run: {error}"
    assert result.receipt["error"] == error
    (repo / ".loom" / "config.yml").write_text("runtime:\n  colour: red\n")
    unknown = run_loom(repo, "run", "--local", env=loom_env(HOME=str(tmp_path / "home")))
    assert unknown.code == 1 and unknown.receipt["error"].endswith('config.yml: unknown key "runtime.colour"')


def test_git_is_not_asked_outside_git(tmp_path: Path) -> None:
    """The git facts are asked before the rules; outside git no git process starts (a `git` that
    records being called shows it), and in a repo they come from two."""
    log = tmp_path / "git-calls"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec /usr/bin/git "$@"\n')
    (fake / "git").chmod(0o755)
    env = loom_env(PATH=f"{fake}:{os.environ['PATH']}")
    plain = make_repo(tmp_path / "plain", "version: v1\nstages: [s]\nx: {stage: s, target: linux, script: ['true']}\n",
                      git=False)
    assert run_loom(plain, "run", "--local", env=env).code == 0
    assert not log.exists()
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [s]\nx: {stage: s, target: linux, script: ['true']}\n")
    assert run_loom(repo, "run", "--local", env=env).code == 0
    calls = log.read_text().splitlines()
    # Each exactly once; started together at the load (workspace.GitPrefetch), so in no fixed order.
    assert sorted(c.split()[0] for c in calls) == ["for-each-ref", "ls-files", "rev-parse"], calls

