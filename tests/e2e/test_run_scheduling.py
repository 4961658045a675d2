"""`loom run --local` scheduling (spec §3.2, §3.3, §2.6): stages, eager `needs`, the `--jobs` bound,
`--job`, and `workflow.rules`. Ordering is proven with marker files written by the jobs, never by
timing: a job that ran too early or alongside another fails on its own check."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.run_helpers import check_logs_dir, terminal
from tests.process.runner import load, loom_env, make_repo, run_loom

# waits (bounded) for a marker file; the bound only turns a scheduling bug into a failed job
WAIT = "i=0; while [ ! -e {path} ] && [ $i -lt 400 ]; do i=$((i+1)); sleep 0.05; done; test -e {path}"


def test_stages_run_in_order(tmp_path: Path) -> None:
    m = tmp_path / "m"
    m.mkdir()
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [one, two, three]
        default:
          target: linux
        a1:
          stage: one
          script: [touch {m}/a1]
        a2:
          stage: one
          script: [touch {m}/a2]
        b1:
          stage: two
          script: ["test -e {m}/a1 && test -e {m}/a2 && test ! -e {m}/c1", "touch {m}/b1"]
        c1:
          stage: three
          script: ["test -e {m}/b1", "touch {m}/c1"]
    """)
    result = run_loom(repo, "run", "--local", "-j", "4")
    assert result.code == 0, result.stderr
    assert [j["status"] for j in result.receipt["jobs"]] == ["success"] * 4
    starts = [line for line in terminal(result) if line.endswith("started (host)")]
    assert starts.index('job "b1" started (host)') > starts.index('job "a2" started (host)')
    assert starts[-1] == 'job "c1" started (host)'


def test_needs_starts_a_job_as_soon_as_its_needs_succeed(tmp_path: Path) -> None:
    """`slow` (stage one) finishes only once `eager` (stage two, needs `quick`) has run: that can only
    happen if `eager` starts before stage one is over."""
    m = tmp_path / "m"
    m.mkdir()
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [one, two]
        default:
          target: linux
        slow:
          stage: one
          script: ["{WAIT.format(path=f'{m}/eager')}"]
        quick:
          stage: one
          script: [touch {m}/quick]
        eager:
          stage: two
          needs: [quick]
          script: ["test -e {m}/quick && test ! -e {m}/slow", "touch {m}/eager"]
        late:
          stage: two
          script: [echo late]
    """)
    result = run_loom(repo, "run", "--local", "-j", "3")
    assert result.code == 0, result.stderr
    lines = terminal(result)
    assert lines.index('job "eager" started (host)') < lines.index('job "slow" passed in N.NNs')
    assert lines.index('job "late" started (host)') > lines.index('job "slow" passed in N.NNs')


JOBS = """
version: v1
stages: [s]
default:
  target: linux
{jobs}
"""


def test_jobs_1_never_runs_two_jobs_at_once(tmp_path: Path) -> None:
    """Each job takes a mkdir lock (atomic) and holds it for a while: an overlap fails the job."""
    m = tmp_path / "m"
    m.mkdir()
    step = f"mkdir {m}/lock && echo start $LOOM_JOB_NAME >> {m}/log && sleep 0.2 && " \
           f"echo end $LOOM_JOB_NAME >> {m}/log && rmdir {m}/lock"
    jobs = "".join(f'j{i}:\n  stage: s\n  script: ["{step}"]\n' for i in range(1, 5))
    repo = make_repo(tmp_path / "repo", JOBS.format(jobs=jobs))
    result = run_loom(repo, "run", "--local", "--jobs", "1")
    assert result.code == 0, result.stderr
    assert (m / "log").read_text().splitlines() == [
        f"{what} j{i}" for i in range(1, 5) for what in ("start", "end")]


def test_jobs_bound_allows_parallel_jobs(tmp_path: Path) -> None:
    """The control of the test above: with -j 3, three jobs meet at a barrier (possible only at once)."""
    m = tmp_path / "m"
    m.mkdir()
    step = f"touch {m}/$LOOM_JOB_NAME; " + " && ".join(WAIT.format(path=f"{m}/j{i}") for i in range(1, 4))
    jobs = "".join(f'j{i}:\n  stage: s\n  script: ["{step}"]\n' for i in range(1, 4))
    repo = make_repo(tmp_path / "repo", JOBS.format(jobs=jobs))
    result = run_loom(repo, "run", "--local", "-j", "3")
    assert result.code == 0, result.stderr
    assert [j["status"] for j in result.receipt["jobs"]] == ["success"] * 3


def test_job_flag_runs_the_job_and_its_transitive_needs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [a, b, c]
        default:
          target: linux
        lint:
          stage: a
          script: [echo lint]
        build:
          stage: a
          script: [echo build]
        test:
          stage: b
          needs: [build]
          script: [echo test]
        deploy:
          stage: c
          needs: [test]
          script: [echo deploy]
        docs:
          stage: c
          needs: []
          script: [echo docs]
    """)
    result = run_loom(repo, "run", "--local", "--job", "deploy")
    assert result.code == 0, result.stderr
    assert [j["id"] for j in result.receipt["jobs"]] == ["build", "test", "deploy"]
    manifest = load(Path(result.receipt["pipeline_manifest_path"]))
    assert [j["id"] for j in manifest["jobs"]] == ["build", "test", "deploy"]
    assert not (result.logs_dir / "jobs" / "lint").exists()
    two = run_loom(repo, "run", "--local", "--job", "test", "--job", "docs")
    assert two.code == 0, two.stderr
    assert [j["id"] for j in two.receipt["jobs"]] == ["build", "test", "docs"]
    bad = run_loom(repo, "run", "--local", "--job", "nope")
    assert bad.code == 1
    assert bad.stderr.splitlines()[-1] == (
        'loom run: unknown job "nope" (jobs: lint, build, test, deploy, docs)')
    assert bad.receipt["status"] == "failure"


def test_steps_stop_at_the_first_failing_step(tmp_path: Path) -> None:
    m = tmp_path / "m"
    m.mkdir()
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        x:
          stage: s
          target: linux
          script: ["touch {m}/1", "false", "touch {m}/3"]
    """)
    result = run_loom(repo, "run", "--local")
    assert result.code == 1
    assert sorted(p.name for p in m.iterdir()) == ["1"]
    assert [(s["index"], s["exit_code"]) for s in result.job_manifest("x")["steps"]] == [(1, 0), (2, 1)]
    assert result.stderr.splitlines()[-1] == 'loom run: job "x" failed (exit code 1)'


RULES = """
version: v1
stages: [s]
workflow:
  rules:
    - if: '$LOOM_E2E_GATE == "never"'
      when: never
    - if: '$LOOM_E2E_GATE'
x:
  stage: s
  target: linux
  script: [touch {marker}]
"""


def test_workflow_rules_skip_the_pipeline(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    repo = make_repo(tmp_path / "repo", RULES.format(marker=marker))
    cases = ((loom_env(), "no rule matched"), (loom_env(LOOM_E2E_GATE="never"), "rule 1 matched with when: never"))
    for env, why in cases:
        result = run_loom(repo, "run", "--local", env=env)
        assert result.code == 0, result.stderr
        # said last, so a run that did nothing never reads as one that passed
        assert terminal(result, summary=False) == [
            "loom run passed", f"receipt: {result.receipt_path}",
            f"loom run: pipeline skipped by workflow.rules ({why})"]
        receipt = result.receipt
        assert (receipt["status"], receipt["exit_code"], receipt["skipped_reason"]) == (
            "success", 0, "workflow.rules")
        assert "error" not in receipt
        assert receipt["jobs"] == []
        assert load(Path(receipt["pipeline_summary_path"]))["status"] == "success"
        check_logs_dir(result.logs_dir)
        assert not marker.exists()
    ran = run_loom(repo, "run", "--local", env=loom_env(LOOM_E2E_GATE="yes"))
    assert ran.code == 0, ran.stderr
    assert "skipped_reason" not in ran.receipt
    assert marker.exists()
