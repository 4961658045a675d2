"""`loom run --local`: the isolated workspace (spec §3.1) and the host provider's environment (§4.1,
§2.5): the caller's PATH, predefined variables, precedence and expansion, `LOOM_DEBUG_TRACE`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e.run_helpers import git, output_events
from tests.process.runner import loom_env, make_repo, run_loom

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def checkout_state(repo: Path) -> dict[str, bytes | str]:
    """Every file of the checkout outside .loom/.runtime, with its content (or link target)."""
    state: dict[str, bytes | str] = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo)
        if rel.parts[:1] == (".git",) or rel.parts[:2] == (".loom", ".runtime"):
            continue
        if path.is_symlink():
            state[str(rel)] = "-> " + os.readlink(path)
        elif path.is_file():
            state[str(rel)] = path.read_bytes()
    return state


def test_snapshot_holds_the_working_tree_and_the_checkout_is_never_modified(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "keep.txt").write_text("keep\n")
    (repo / "mod.txt").write_text("old\n")
    (repo / "del.txt").write_text("del\n")
    (repo / ".gitignore").write_text("ignored.txt\nbuild/\n")
    os.symlink("keep.txt", repo / "link")
    make_repo(repo, """
        version: v1
        stages: [s]
        default:
          target: linux
        look:
          stage: s
          script:
            - cat mod.txt staged.txt untracked.txt
            - test ! -e del.txt && test ! -e ignored.txt && test ! -e build && echo absent
            - test -L link && readlink link && cat link
            - echo "$PWD"; echo "$CI_PROJECT_DIR"
        vandal:
          stage: s
          needs: [look]
          script:
            - echo junk > keep.txt; rm mod.txt; rm link; touch new.txt; mkdir -p build; touch build/x
            - rm -rf .loom
    """)
    (repo / "mod.txt").write_text("new\n")
    (repo / "del.txt").unlink()
    (repo / "staged.txt").write_text("staged\n")
    subprocess.run(["git", "add", "staged.txt"], cwd=repo, check=True)
    (repo / "untracked.txt").write_text("untracked\n")
    (repo / "ignored.txt").write_text("ignored\n")
    (repo / "build").mkdir()
    (repo / "build" / "out").write_text("ignored too\n")
    before, status = checkout_state(repo), git(repo, "status", "--porcelain")
    head = git(repo, "rev-parse", "HEAD")

    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    snapshot = result.receipt["snapshot_path"]
    assert result.receipt["snapshot_head_sha"] == head
    assert result.step_lines("look", 1) == ["new", "staged", "untracked"]
    assert result.step_lines("look", 2) == ["absent"]
    assert result.step_lines("look", 3) == ["keep.txt", "keep"]
    assert result.step_lines("look", 4) == [snapshot, snapshot]
    assert checkout_state(repo) == before
    assert git(repo, "status", "--porcelain") == status
    assert git(repo, "rev-parse", "HEAD") == head
    assert (Path(snapshot) / "new.txt").is_file()  # the vandal did run, in the snapshot


def test_outside_git_the_whole_folder_but_the_runtime_is_copied(tmp_path: Path) -> None:
    repo = tmp_path / "plain"
    (repo / "sub").mkdir(parents=True)
    (repo / "sub" / "f.txt").write_text("plain file\n")
    make_repo(repo, """
        version: v1
        stages: [s]
        x:
          stage: s
          target: linux
          script: ["cat sub/f.txt", "test ! -e .loom/.runtime && echo no-runtime", "echo ${CI_COMMIT_SHA:-none}"]
    """, git=False)
    first = run_loom(repo, "run", "--local")
    assert first.code == 0, first.stderr
    second = run_loom(repo, "run", "--local")  # the first run's runtime dir is not copied either
    assert second.code == 0, second.stderr
    assert second.step_lines("x", 1) == ["plain file"]
    assert second.step_lines("x", 2) == ["no-runtime"]
    assert second.step_lines("x", 3) == ["none"]
    assert second.receipt["snapshot_head_sha"] is None


def test_caller_path_reaches_the_step_unchanged(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    tool = tools / "loom-e2e-tool"
    tool.write_text("#!/bin/sh\necho tool from $0\n")
    tool.chmod(0o755)
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        x:
          stage: s
          target: linux
          script: [loom-e2e-tool, 'printf "%s\\n" "$PATH"', 'printf "%s\\n" "$FROM_CALLER"']
    """)
    path = f"{tools}:{os.environ['PATH']}"
    result = run_loom(repo, "run", "--local", env=loom_env(PATH=path, FROM_CALLER="caller value"))
    assert result.code == 0, result.stderr
    assert result.step_lines("x", 1) == [f"tool from {tool}"]
    assert result.step_lines("x", 2) == [path]
    assert result.step_lines("x", 3) == ["caller value"]


PREDEFINED = [
    "LOOM_CI", "CI", "LOOM_RUN_ID", "LOOM_PIPELINE_ID", "LOOM_JOB_ID", "LOOM_JOB_NAME", "LOOM_JOB_STAGE",
    "LOOM_PROJECT_DIR", "LOOM_PROVIDER", "CI_JOB_NAME", "CI_JOB_STAGE", "CI_PROJECT_DIR", "CI_PIPELINE_ID",
    "CI_COMMIT_SHA", "CI_COMMIT_SHORT_SHA", "CI_COMMIT_BRANCH",
]


def test_predefined_variables(tmp_path: Path) -> None:
    show = " ".join(f'"{name}=${name}"' for name in PREDEFINED)
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [check]
        vars:
          stage: check
          target: linux
          script: ['printf "%s\\n" {show}']
    """)
    subprocess.run(["git", "checkout", "-qb", "feature/e2e"], cwd=repo, check=True)
    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    receipt = result.receipt
    sha = git(repo, "rev-parse", "HEAD")
    expected = {
        "LOOM_CI": "true", "CI": "true", "LOOM_RUN_ID": receipt["run_id"],
        "LOOM_PIPELINE_ID": receipt["pipeline_id"], "LOOM_JOB_ID": "vars", "LOOM_JOB_NAME": "vars",
        "LOOM_JOB_STAGE": "check", "LOOM_PROJECT_DIR": receipt["snapshot_path"], "LOOM_PROVIDER": "host",
        "CI_JOB_NAME": "vars", "CI_JOB_STAGE": "check", "CI_PROJECT_DIR": receipt["snapshot_path"],
        "CI_PIPELINE_ID": receipt["pipeline_id"], "CI_COMMIT_SHA": sha, "CI_COMMIT_SHORT_SHA": sha[:8],
        "CI_COMMIT_BRANCH": "feature/e2e",
    }
    assert result.step_lines("vars", 1) == [f"{k}={v}" for k, v in expected.items()]


def test_variable_precedence_expansion_and_overrides(tmp_path: Path) -> None:
    names = ["R", "D", "T", "J", "FULL", "LIT", "UNK", "WHO", "CI_PROJECT_DIR", "HOME", "FROM_CALLER"]
    show = " ".join(f'"{name}=${name}"' for name in names)
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        variables:
          R: root
          D: root
          T: root
          J: root
          FROM_CALLER: from workflow
        default:
          target: linux
          variables:
            D: default
            T: default
            J: default
        .tmpl:
          variables:
            T: template
            J: template
        job:
          stage: s
          extends: .tmpl
          variables:
            J: job
            BASE: /opt/x
            FULL: "$BASE/bin:${{BASE}}/lib:$J"
            LIT: "$$HOME"
            UNK: "$NOT_DEFINED_ANYWHERE"
            WHO: "job-$LOOM_JOB_NAME"
            CI_PROJECT_DIR: /custom/workdir
          script:
            - 'printf "%s\\n" {show}'
            - 'J=local sh -c "echo \\$J"'
            - pwd
    """)
    result = run_loom(repo, "run", "--local", env=loom_env(FROM_CALLER="caller", HOME="/home/e2e"))
    assert result.code == 0, result.stderr
    assert result.step_lines("job", 1) == [
        "R=root", "D=default", "T=template", "J=job", "FULL=/opt/x/bin:/opt/x/lib:job", "LIT=$HOME",
        "UNK=$NOT_DEFINED_ANYWHERE", "WHO=job-job", "CI_PROJECT_DIR=/custom/workdir", "HOME=/home/e2e",
        "FROM_CALLER=from workflow",
    ]
    assert result.step_lines("job", 2) == ["local"]
    assert result.step_lines("job", 3) == [result.receipt["snapshot_path"]]  # the workspace, still


def test_debug_trace_gives_sh_x_output(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        x:
          stage: s
          target: linux
          script: [echo traced]
    """)
    traced = run_loom(repo, "run", "--local", env=loom_env(LOOM_DEBUG_TRACE="1"))
    assert traced.code == 0, traced.stderr
    step = traced.logs_dir / "jobs" / "x" / "user" / "script" / "01" / "events.jsonl"
    # two pipes: the order between stdout and stderr is not defined, each stream's own order is
    assert sorted(output_events(step)) == [("stderr", "+ echo traced"), ("stdout", "traced")]
    plain = run_loom(repo, "run", "--local")
    assert output_events(plain.logs_dir / "jobs" / "x" / "user" / "script" / "01" / "events.jsonl") == [
        ("stdout", "traced")]


def test_host_variables_expand_from_the_caller_environment(tmp_path: Path) -> None:
    """A host job starts from the caller's environment, so `$PATH` in a variable is the caller's PATH."""
    tools = tmp_path / "extra"
    tools.mkdir()
    tool = tools / "loom-e2e-extra"
    tool.write_text("#!/bin/sh\necho extra tool\n")
    tool.chmod(0o755)
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        x:
          stage: s
          target: linux
          variables:
            PATH: "$PATH:{tools}"
            SUB: "${{HOME}}/sub"
            CI: "was-$CI"
          script: ['printf "%s\\n" "$PATH" "$SUB" "$CI"', loom-e2e-extra]
    """)
    env = loom_env(HOME="/home/e2e", CI="caller-ci")
    result = run_loom(repo, "run", "--local", env=env)
    assert result.code == 0, result.stderr
    # a predefined variable still wins over the caller's value of the same name
    assert result.step_lines("x", 1) == [f"{env['PATH']}:{tools}", "/home/e2e/sub", "was-true"]
    assert result.step_lines("x", 2) == ["extra tool"]


def test_a_step_runs_the_sh_found_first_on_its_jobs_path(tmp_path: Path) -> None:
    """`sh` is looked up on the job's PATH as exec would (loom finds it once per PATH, not at every
    step): the caller's PATH, a job's own PATH, and a PATH with a relative folder, which is relative
    to the job's workspace."""
    def shell(folder: Path, says: str) -> None:
        folder.mkdir(parents=True)
        (folder / "sh").write_text(f"#!/bin/dash\necho {says}\nexec /bin/dash \"$@\"\n")
        (folder / "sh").chmod(0o755)

    shell(tmp_path / "caller-bin", "caller sh")
    shell(tmp_path / "job-bin", "job sh")
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        plain:
          stage: s
          target: linux
          script: ['echo one', 'echo two']
        own:
          stage: s
          target: linux
          variables:
            PATH: "{tmp_path / 'job-bin'}:/usr/bin:/bin"
          script: ['echo three']
        relative:
          stage: s
          target: linux
          variables:
            PATH: "tools:/usr/bin:/bin"
          script: ['echo four']
    """)
    shell(repo / "tools", "workspace sh")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, capture_output=True)
    result = run_loom(repo, "run", "--local", env=loom_env(PATH=f"{tmp_path / 'caller-bin'}:{os.environ['PATH']}"))
    assert result.code == 0, result.stderr
    assert result.step_lines("plain", 1) == ["caller sh", "one"]
    assert result.step_lines("plain", 2) == ["caller sh", "two"]
    assert result.step_lines("own", 1) == ["job sh", "three"]
    assert result.step_lines("relative", 1) == ["workspace sh", "four"]
