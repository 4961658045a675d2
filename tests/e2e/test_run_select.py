"""`loom run --list` and `--job NAME --no-deps` (spec §11): the jobs a run would start, and a run of
exactly the named jobs whose upstream artifacts come from the newest earlier run that produced them.
Real `loom` processes on real repos."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.run_helpers import terminal
from tests.process.runner import make_repo, run_loom

PIPELINE = """
    version: v1
    stages: [build, test, ship]
    default:
      target: linux
    build:
      stage: build
      script: ["date +%s%N > out.txt"]
      artifacts: {paths: [out.txt]}
    lint:
      stage: build
      script: ["true"]
    unit:
      stage: test
      needs: [build]
      script: ["cat out.txt"]
    docs:
      stage: test
      needs: []
      image: loom-test/busybox
      script: ["true"]
    ship:
      stage: ship
      script: ["cat out.txt"]
"""


def test_list_prints_the_runnable_jobs_and_runs_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", PIPELINE)
    result = run_loom(repo, "run", "--list")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "stage  job    provider  needs",
        "build  build  host      -",
        "build  lint   host      -",
        "test   unit   host      build",
        "test   docs   docker    -",
        "ship   ship   host      (stages build, test)",
    ]
    assert result.stderr == ""
    assert not (repo / ".loom" / ".runtime").exists()  # no run, no receipt, no snapshot
    only = run_loom(repo, "run", "--local", "--list", "--job", "unit")
    assert only.stdout.splitlines()[1:] == ["build  build  host      -", "test   unit   host      build"]
    exact = run_loom(repo, "run", "--list", "--job", "ship", "--no-deps")
    assert exact.stdout.splitlines()[1:] == ["ship   ship  host      (stages build, test)"]


def test_list_reports_a_bad_workflow_and_an_unknown_job(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", 'version: v1\nstages: [s]\nx: {stage: nope, target: linux, script: ["true"]}\n')
    bad = run_loom(repo, "run", "--list")
    assert bad.code == 1 and bad.stdout == ""
    assert bad.stderr.splitlines() == ['workflow.yml:3 stage "nope" of job "x" is not declared in stages',
                                       'loom run: invalid workflow: workflow.yml:3 stage "nope" of job "x" is not '
                                       "declared in stages"]
    good = make_repo(tmp_path / "good", PIPELINE)
    unknown = run_loom(good, "run", "--list", "--job", "nope")
    assert unknown.code == 1
    assert unknown.stderr == 'loom run: unknown job "nope" (jobs: build, lint, unit, docs, ship)\n'


def test_no_deps_needs_job(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", PIPELINE)
    result = run_loom(repo, "run", "--local", "--no-deps")
    assert result.code == 2
    assert "--no-deps needs --job NAME" in result.stderr
    assert not (repo / ".loom" / ".runtime").exists()


def test_no_deps_restores_upstream_artifacts_from_the_newest_run(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", PIPELINE)
    # no run ever built: the error names the job whose artifacts are missing, and there is a receipt
    missing = run_loom(repo, "run", "--local", "--job", "unit", "--no-deps")
    assert missing.code == 1
    error = ('--no-deps: no earlier run produced the artifacts of job "build", which job "unit" needs '
             "(run it once: loom run --local --job build)")
    assert missing.stderr.splitlines()[-1] == f"loom run: {error}"
    assert missing.receipt["error"] == error
    first = run_loom(repo, "run", "--local", "--job", "build")
    second = run_loom(repo, "run", "--local", "--job", "build")
    assert first.code == second.code == 0
    newest = (second.logs_dir / "jobs" / "build" / "artifacts" / "out.txt").read_text()
    assert newest != (first.logs_dir / "jobs" / "build" / "artifacts" / "out.txt").read_text()
    result = run_loom(repo, "run", "--local", "--job", "unit", "--no-deps")
    assert result.code == 0, result.stderr
    assert terminal(result)[:3] == [
        f'--no-deps: artifacts of job "build" from run {second.receipt["run_id"]}',
        'job "unit" started (host)',
        'job "unit" passed in N.NNs',
    ]
    assert [j["id"] for j in result.receipt["jobs"]] == ["unit"]
    assert result.receipt["upstream_artifacts"] == {"build": second.receipt["run_id"]}
    assert result.step_lines("unit", 1) == [newest.strip()]
    # `ship` waits for every job of the stages before it; only `build` declares artifacts
    ship = run_loom(repo, "run", "--local", "--job", "ship", "--no-deps")
    assert ship.code == 0, ship.stderr
    assert [j["id"] for j in ship.receipt["jobs"]] == ["ship"]
    assert ship.step_lines("ship", 1) == [newest.strip()]
