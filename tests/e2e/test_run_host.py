"""`loom run --local` end to end on host jobs: terminal lines and exit codes (spec §1.1), the receipt
(§5.2), summaries and manifests (§5.3), events (§5.4), the diagnostics ladder and `loom logs`.

One failing pipeline is run once per module and shared by most assertions (keeps the file fast).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.run_helpers import (
    SCHEMA,
    TS,
    check_logs_dir,
    events,
    git,
    output_events,
    step_doc,
    terminal,
)
from tests.process.runner import (
    KILLED_DAEMON_STEP,
    LOOM,
    Background,
    Result,
    load,
    loom_env,
    make_repo,
    run_loom,
    run_processes,
)

FAILING = """
version: v1
stages: [build, middle, test]
default:
  target: linux
build:
  stage: build
  script:
    - echo hello from build
    - echo to stderr >&2
    - mkdir -p out && echo art > out/a.txt && echo skip > out/b.log
  artifacts:
    paths: [out]
    exclude: ["out/*.log"]
middle:
  stage: middle
  script:
    - rm out/a.txt
test:
  stage: test
  script:
    - cat out/a.txt
    - echo before; exit 3
    - echo never
deploy:
  stage: test
  needs: [test]
  script: [echo deploy]
notify:
  stage: test
  needs: [deploy]
  script: [echo notify]
"""

PASSING = """
version: v1
stages: [only]
one:
  stage: only
  target: linux
  script: [echo one]
"""


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Result:
    repo = make_repo(tmp_path_factory.mktemp("failing") / "repo", FAILING)
    result = run_loom(repo, "run", "--local")
    assert result.code == 1, result.stderr
    assert run_processes(result.receipt["run_id"]) == []
    return result


@pytest.fixture(scope="module")
def passing(tmp_path_factory: pytest.TempPathFactory) -> Result:
    repo = make_repo(tmp_path_factory.mktemp("passing") / "repo", PASSING)
    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    return result


# -- terminal and exit codes ------------------------------------------------------------------------
def test_default_terminal_on_failure(failing: Result) -> None:
    receipt = failing.receipt_path
    assert receipt.is_absolute()
    assert terminal(failing) == [
        'job "build" started (host)',
        'job "build" passed in N.NNs',
        'job "middle" started (host)',
        'job "middle" passed in N.NNs',
        'job "test" started (host)',
        'job "test" failed in N.NNs (exit code 3)',
        "    before",  # the failing step's last lines, then where the rest is (spec §11)
        f"  logs: loom logs {failing.receipt['run_id']} --job test",
        'job "deploy" skipped (needs "test", which failed)',
        'job "notify" skipped (needs "deploy", which was skipped)',
        "loom run failed",
        f"receipt: {receipt}",
        'loom run: job "test" failed (exit code 3)',
    ]
    assert failing.stdout == ""


def test_default_terminal_on_success(passing: Result) -> None:
    assert terminal(passing) == [
        'job "one" started (host)',
        'job "one" passed in N.NNs',
        "loom run passed",
        f"receipt: {passing.receipt_path}",
    ]
    assert passing.receipt_path.is_absolute() and passing.receipt_path.exists()


def test_quiet_prints_only_status_and_receipt(failing: Result, passing: Result) -> None:
    bad = run_loom(failing.repo, "run", "--local", "-q")
    assert bad.code == 1
    assert bad.stderr.splitlines() == ["loom run failed", f"receipt: {bad.receipt_path}"]
    assert bad.receipt["status"] == "failure"
    # verbosity changes only the terminal: the logs are complete
    assert bad.step_lines("test", 2) == ["before"]
    good = run_loom(passing.repo, "run", "--local", "--quiet")
    assert good.code == 0
    assert good.stderr.splitlines() == ["loom run passed", f"receipt: {good.receipt_path}"]


def test_verbose_prints_run_id_logs_workspace_and_provider(passing: Result) -> None:
    result = run_loom(passing.repo, "run", "--local", "-v")
    assert result.code == 0
    receipt = result.receipt
    lines = terminal(result)
    assert f"run id {receipt['run_id']}" in lines
    assert f"logs {receipt['logs_dir']}" in lines
    assert any(line.startswith(f"workspace {receipt['snapshot_path']}") for line in lines), lines
    assert 'job "one" started (host)' in lines
    assert lines[-2:] == ["loom run passed", f"receipt: {result.receipt_path}"]
    assert lines.index(f"run id {receipt['run_id']}") < lines.index('job "one" started (host)')


def test_stream_prefixes_each_line_live(tmp_path: Path) -> None:
    go = tmp_path / "go"
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        default:
          target: linux
        live:
          stage: s
          script:
            - echo ping; echo err-ping >&2
            - "i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.05; done; echo pong"
        other:
          stage: s
          script: [printf 'o1\\no2\\n']
    """)
    bg = Background(repo, "run", "--local", "--stream", "-j", "2")
    assert bg.proc.stderr is not None
    seen: list[str] = []
    try:
        while "[live] ping" not in seen:  # the job is still blocked on `go`: the line arrived live
            line = bg.proc.stderr.readline()
            assert line, f"stream ended before the live line: {seen}"
            seen.append(line.rstrip("\n"))
        assert not go.exists()
    finally:
        go.touch()  # never leave the run waiting
    # Read the rest through the same text stream: communicate() would bypass what readline() buffered.
    rest = bg.proc.stderr.read()
    bg.proc.wait(timeout=60)
    result = Result(bg.proc.returncode, bg.proc.stdout.read() if bg.proc.stdout else "", rest, repo)
    assert result.code == 0, result.stderr
    lines = seen + rest.splitlines()
    for expected in ("[live] ping", "[live] err-ping", "[live] pong", "[other] o1", "[other] o2"):
        assert lines.count(expected) == 1, (expected, lines)
    assert lines.index("[other] o1") < lines.index("[other] o2")
    assert lines[-2:] == ["loom run passed", f"receipt: {result.receipt_path}"]
    assert result.step_lines("live", 2) == ["pong"]


def test_without_stream_no_job_output_reaches_the_terminal(failing: Result) -> None:
    assert "hello from build" not in failing.stderr
    assert "art" not in failing.stderr.splitlines()
    # only the failing step's last lines, under its failed line
    assert [line for line in failing.stderr.splitlines() if "before" in line] == ["    before"]


def test_local_is_required(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", PASSING)
    result = run_loom(repo, "run")
    assert result.code == 1
    assert result.stderr == "loom run: --local or --remote ADDRESS is required\n"
    assert not (repo / ".loom" / ".runtime" / "receipts").exists()


@pytest.mark.parametrize("args", [("--jobs", "0"), ("-j", "x"), ("--no-such-flag",), ("-q", "--bogus")])
def test_usage_errors_exit_2_and_start_nothing(tmp_path: Path, args: tuple[str, ...]) -> None:
    repo = make_repo(tmp_path / "repo", PASSING)
    result = run_loom(repo, "run", "--local", *args)
    assert result.code == 2, result.stderr
    assert "Usage:" in result.stderr
    assert not (repo / ".loom" / ".runtime" / "receipts").exists()
    assert not (repo / ".loom" / ".runtime" / "logs").exists()


def test_allow_failure_passes_and_dependents_run(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [a, b]
        default:
          target: linux
        flaky:
          stage: a
          allow_failure: true
          script: [exit 4]
        after:
          stage: a
          needs: [flaky]
          script: [echo after]
        later:
          stage: b
          script: [echo later]
    """)
    result = run_loom(repo, "run", "--local", "-j", "1")
    assert result.code == 0, result.stderr
    assert terminal(result) == [
        'job "flaky" started (host)',
        'job "flaky" failed in N.NNs (exit code 4, allowed to fail)',
        f"  logs: loom logs {result.receipt['run_id']} --job flaky",  # its step printed nothing
        'job "after" started (host)',
        'job "after" passed in N.NNs',
        'job "later" started (host)',
        'job "later" passed in N.NNs',
        "loom run passed",
        f"receipt: {result.receipt_path}",
    ]
    receipt = result.receipt
    assert receipt["status"] == "success" and receipt["exit_code"] == 0 and "error" not in receipt
    assert [(j["id"], j["status"]) for j in receipt["jobs"]] == [
        ("flaky", "failed"), ("after", "success"), ("later", "success")]
    flaky = result.job_summary("flaky")
    assert (flaky["status"], flaky["exit_code"], flaky["failure_kind"], flaky["allow_failure"]) == (
        "failed", 4, "step_failed", True)
    manifest = load(Path(receipt["pipeline_manifest_path"]))
    assert "failing_job_id" not in manifest and "failing_job_manifest_path" not in manifest
    assert load(Path(receipt["pipeline_summary_path"]))["status"] == "success"


# -- receipt ----------------------------------------------------------------------------------------
RECEIPT_KEYS = {
    "schema_version", "kind", "run_id", "command", "loom_version", "repo_root", "workflow_path",
    "started_at", "finished_at", "duration_ms", "status", "exit_code", "error", "logs_dir",
    "events_jsonl_path", "pipeline_summary_path", "pipeline_manifest_path", "snapshot_path",
    "snapshot_head_sha", "graph_ir", "jobs",
}


def test_receipt_fields(failing: Result) -> None:
    receipt = failing.receipt
    repo = failing.repo.resolve()
    assert receipt.keys() >= RECEIPT_KEYS, RECEIPT_KEYS - receipt.keys()
    run_id = receipt["run_id"]
    ns = re.fullmatch(r"loom-run-local-(\d+)", run_id)
    assert ns is not None
    runtime = repo / ".loom" / ".runtime"
    assert failing.receipt_path == runtime / "receipts" / f"{run_id}.json"
    assert receipt["schema_version"] == "v1" and receipt["kind"] == "loom-run-local"
    assert receipt["pipeline_id"] == f"loom-local-{ns.group(1)}"
    assert receipt["command"] == ["loom", "run", "--local"]
    assert receipt["loom_version"] == subprocess.run(
        [*LOOM, "version"], capture_output=True, text=True, check=True).stdout.split()[-1]
    assert receipt["repo_root"] == str(repo)
    assert receipt["workflow_path"] == str(repo / ".loom" / "workflow.yml")
    assert TS.match(receipt["started_at"]) and TS.match(receipt["finished_at"])
    assert receipt["started_at"] <= receipt["finished_at"]
    assert isinstance(receipt["duration_ms"], int) and receipt["duration_ms"] >= 0
    assert (receipt["status"], receipt["exit_code"]) == ("failure", 1)
    assert receipt["error"] == 'job "test" failed (exit code 3)'
    logs = runtime / "logs" / run_id
    assert receipt["logs_dir"] == str(logs)
    assert receipt["events_jsonl_path"] == str(logs / "events.jsonl")
    assert receipt["pipeline_summary_path"] == str(logs / "pipeline" / "summary.json")
    assert receipt["pipeline_manifest_path"] == str(logs / "pipeline" / "manifest.json")
    assert receipt["snapshot_path"] == str(runtime / "workspaces" / run_id)
    assert receipt["snapshot_head_sha"] == git(repo, "rev-parse", "HEAD")
    for key in ("logs_dir", "events_jsonl_path", "pipeline_summary_path", "pipeline_manifest_path",
                "snapshot_path"):
        assert Path(receipt[key]).is_absolute() and Path(receipt[key]).exists(), key
    compiled = subprocess.run([*LOOM, "compile"], cwd=repo, capture_output=True, text=True, env=loom_env())
    assert compiled.returncode == 0, compiled.stderr
    assert receipt["graph_ir"] == json.loads(compiled.stdout)
    assert [(j["id"], j["status"], j["exit_code"], j["failure_kind"]) for j in receipt["jobs"]] == [
        ("build", "success", 0, None),
        ("middle", "success", 0, None),
        ("test", "failed", 3, "step_failed"),
        ("deploy", "skipped", None, "dependency_failed"),
        ("notify", "skipped", None, "dependency_failed"),
    ]
    for job in receipt["jobs"]:
        assert set(job) >= {"id", "status", "exit_code", "failure_kind", "duration_ms"}
        assert isinstance(job["duration_ms"], int) and job["duration_ms"] >= 0
    assert (runtime / ".gitignore").read_text() == "*\n"


def test_receipt_on_success_has_no_error(passing: Result) -> None:
    receipt = passing.receipt
    assert (receipt["status"], receipt["exit_code"]) == ("success", 0)
    assert "error" not in receipt
    assert receipt["jobs"] == [{"id": "one", "status": "success", "exit_code": 0, "failure_kind": None,
                                "duration_ms": receipt["jobs"][0]["duration_ms"]}]


# -- pipeline and job documents ---------------------------------------------------------------------
def test_pipeline_summary_and_manifest(failing: Result) -> None:
    receipt = failing.receipt
    summary = load(Path(receipt["pipeline_summary_path"]))
    assert summary["schema_version"] == SCHEMA
    assert (summary["run_id"], summary["pipeline_id"]) == (receipt["run_id"], receipt["pipeline_id"])
    assert (summary["status"], summary["exit_code"]) == ("failure", 1)
    assert (summary["started_at"], summary["finished_at"]) == (receipt["started_at"], receipt["finished_at"])
    assert summary["duration_ms"] == receipt["duration_ms"]
    assert summary["jobs"] == {"total": 5, "success": 2, "failed": 1, "skipped": 2, "canceled": 0}
    manifest = load(Path(receipt["pipeline_manifest_path"]))
    assert manifest["schema_version"] == SCHEMA
    assert manifest["jobs"] == [
        {"id": name, "stage": stage, "status": status, "summary_path": f"jobs/{name}/summary.json",
         "manifest_path": f"jobs/{name}/manifest.json"}
        for name, stage, status in [("build", "build", "success"), ("middle", "middle", "success"),
                                    ("test", "test", "failed"), ("deploy", "test", "skipped"),
                                    ("notify", "test", "skipped")]
    ]
    assert manifest["failing_job_id"] == "test"
    assert manifest["failing_job_manifest_path"] == "jobs/test/manifest.json"


def test_job_summaries(failing: Result) -> None:
    test = failing.job_summary("test")
    assert test["schema_version"] == SCHEMA
    assert (test["job_id"], test["stage"], test["status"], test["exit_code"], test["failure_kind"]) == (
        "test", "test", "failed", 3, "step_failed")
    assert (test["provider"], test["image"], test["run_id"]) == ("host", None, failing.receipt["run_id"])
    assert TS.match(test["started_at"]) and TS.match(test["finished_at"])
    assert isinstance(test["duration_ms"], int) and test["duration_ms"] >= 0
    assert test["resources"]["peak_rss_bytes"] > 0
    assert test["resources"]["cpu_seconds"] >= 0
    build = failing.job_summary("build")
    assert (build["status"], build["exit_code"], build["failure_kind"]) == ("success", 0, None)
    deploy = failing.job_summary("deploy")
    assert (deploy["status"], deploy["failure_kind"], deploy["message"]) == (
        "skipped", "dependency_failed", 'needs "test", which failed')
    notify = failing.job_summary("notify")
    assert notify["message"] == 'needs "deploy", which was skipped'


def test_job_manifests_and_steps(failing: Result) -> None:
    manifest = failing.job_manifest("test")
    assert manifest["schema_version"] == SCHEMA
    assert (manifest["job_id"], manifest["status"]) == ("test", "failed")
    base = "jobs/test/user/script"
    assert manifest["steps"] == [  # steps stop at the first failing step: no step 3
        {"index": 1, "dir": f"{base}/01", "status": "success", "exit_code": 0,
         "summary_path": f"{base}/01/summary.json", "events_path": f"{base}/01/events.jsonl"},
        {"index": 2, "dir": f"{base}/02", "status": "failed", "exit_code": 3,
         "summary_path": f"{base}/02/summary.json", "events_path": f"{base}/02/events.jsonl"},
    ]
    assert not (failing.logs_dir / base / "03").exists()
    for job in ("build", "middle", "test"):  # every job that ran has these two sections
        ran = {s["name"]: s["status"] for s in failing.job_manifest(job)["system_sections"]}
        assert (ran["provider"], ran["cleanup"]) == ("success", "success"), (job, ran)
    sections = {s["name"]: s for s in manifest["system_sections"]}
    assert {"provider", "cleanup", "artifact_restore"} <= sections.keys()
    for name, sec in sections.items():
        assert sec["summary_path"] == f"jobs/test/system/{name}/summary.json"
        assert sec["events_path"] == f"jobs/test/system/{name}/events.jsonl"
        doc = load(failing.logs_dir / sec["summary_path"])
        assert (doc["section"], doc["status"], doc["schema_version"]) == (name, sec["status"], SCHEMA)
    assert manifest["failing_section"] == "user"
    assert manifest["failing_step_events_path"] == f"{base}/02/events.jsonl"
    assert manifest["artifacts"] == []
    first, second = step_doc(failing, "test", 1), step_doc(failing, "test", 2)
    assert (first["index"], first["command"], first["status"], first["exit_code"], first["output_lines"]) == (
        1, "cat out/a.txt", "success", 0, 1)
    assert (second["status"], second["exit_code"], second["output_lines"]) == ("failed", 3, 1)
    assert second["schema_version"] == SCHEMA and isinstance(second["duration_ms"], int)
    build = failing.job_manifest("build")
    assert {"provider", "cleanup", "artifact_extract"} <= {s["name"] for s in build["system_sections"]}
    assert build["failing_section"] is None and build["failing_step_events_path"] is None
    assert [s["status"] for s in build["steps"]] == ["success"] * 3
    assert output_events(failing.logs_dir / build["steps"][0]["events_path"]) == [
        ("stdout", "hello from build")]
    assert output_events(failing.logs_dir / build["steps"][1]["events_path"]) == [("stderr", "to stderr")]


def test_artifacts_extracted_hashed_and_restored(failing: Result) -> None:
    data = b"art\n"
    assert failing.job_manifest("build")["artifacts"] == [
        {"path": "out/a.txt", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    extracted = failing.logs_dir / "jobs" / "build" / "artifacts"
    assert (extracted / "out" / "a.txt").read_bytes() == data
    assert not (extracted / "out" / "b.log").exists()  # excluded
    # `middle` deleted out/a.txt from the shared snapshot; `test` still read it: restored from artifacts
    assert failing.step_lines("test", 1) == ["art"]


def test_every_logs_document_and_event(failing: Result) -> None:
    check_logs_dir(failing.logs_dir)
    run_events = events(Path(failing.receipt["events_jsonl_path"]))
    phases = [(e["phase_code"], e["type"]) for e in run_events
              if e["scope"] in ("run", "pipeline") and "phase_code" in e]
    for code in ("run.bootstrap", "run.pipeline_execute", "pipeline.execute", "run.finalize"):
        assert (code, "phase_started") in phases and (code, "phase_finished") in phases, code
    assert phases[0] == ("run.bootstrap", "phase_started")
    assert phases[-1] == ("run.finalize", "phase_finished")
    finished = {e["phase_code"]: e["status"] for e in run_events
                if e["type"] == "phase_finished" and e["scope"] in ("run", "pipeline")}
    assert finished["pipeline.execute"] == "failed" and finished["run.finalize"] == "failure"
    job_phases = {(e["job_id"], e["phase_code"]) for e in run_events if e["scope"] == "job"}
    for job in ("build", "middle", "test"):
        for code in ("job.provider_prepare", "job.execution", "job.cleanup"):
            assert (job, code) in job_phases, (job, code)
    assert ("test", "job.artifact_restore") in job_phases
    assert all(job not in {j for j, _ in job_phases} for job in ("deploy", "notify"))
    step_end = [e for e in run_events if e["type"] == "step_finished" and e["job_id"] == "test"]
    assert [(e["step"], e["exit_code"]) for e in step_end] == [(1, 0), (2, 3)]
    step = events(failing.logs_dir / "jobs/test/user/script/02/events.jsonl")
    assert [e["type"] for e in step] == ["phase_started", "output", "step_finished"]
    assert step[0]["command"] == "echo before; exit 3" and step[-1]["exit_code"] == 3
    assert all(e["scope"] == "step" and e["phase_code"] == "job.execution" for e in step)


def test_every_run_shares_the_schema_version(failing: Result, passing: Result) -> None:
    check_logs_dir(passing.logs_dir)
    for result in (failing, passing):
        receipt = result.receipt
        assert load(Path(receipt["pipeline_summary_path"]))["schema_version"] == SCHEMA


# -- diagnostics ladder and `loom logs` ---------------------------------------------------------------
def test_ladder_from_receipt_to_failing_step_by_pointers_only(failing: Result) -> None:
    receipt: dict[str, Any] = load(failing.receipt_path)
    logs = Path(receipt["logs_dir"])
    pipeline = load(Path(receipt["pipeline_manifest_path"]))
    job_manifest = load(logs / pipeline["failing_job_manifest_path"])
    assert job_manifest["job_id"] == pipeline["failing_job_id"] == "test"
    assert job_manifest["failing_section"] == "user"
    step_events = events(logs / job_manifest["failing_step_events_path"])
    assert [e.get("line") for e in step_events if e["type"] == "output"] == ["before"]
    assert step_events[-1]["type"] == "step_finished" and step_events[-1]["exit_code"] == 3
    job_summary = load(logs / next(j for j in pipeline["jobs"] if j["id"] == "test")["summary_path"])
    assert job_summary["failure_kind"] == "step_failed"


def loom_logs(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*LOOM, "logs", *args], cwd=repo, capture_output=True, text=True, env=loom_env())
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_loom_logs_follows_the_ladder(failing: Result) -> None:
    run_id = failing.receipt["run_id"]
    newest = loom_logs(failing.repo)  # the newest run of this repo fails the same way
    assert newest.returncode == 0, newest.stderr
    assert newest.stdout == "art\nbefore\n"  # the failing job's whole output, step by step
    failed_in = 'job "test" failed in step 2 (exit code 3)'
    assert re.fullmatch(rf"run loom-run-local-\d+: {re.escape(failed_in)}", newest.stderr.splitlines()[0])
    given = loom_logs(failing.repo, run_id)
    assert given.returncode == 0, given.stderr
    assert given.stdout == "art\nbefore\n"
    assert given.stderr.splitlines() == [
        f"run {run_id}: {failed_in}",
        "--- step 1 passed: cat out/a.txt",
        "--- step 2 failed (exit code 3): echo before; exit 3  <- the job failed here",
    ]
    one = loom_logs(failing.repo, run_id, "--step", "2")
    assert (one.stdout, one.stderr.splitlines()[1:]) == (
        "before\n", ["--- step 2 failed (exit code 3): echo before; exit 3  <- the job failed here"])
    job = loom_logs(failing.repo, run_id, "--job", "build")
    assert job.returncode == 0, job.stderr
    assert job.stdout == "hello from build\nto stderr\n"
    assert job.stderr.splitlines() == [
        "--- step 1 passed: echo hello from build",
        "--- step 2 passed: echo to stderr >&2",
        "--- step 3 passed: mkdir -p out && echo art > out/a.txt && echo skip > out/b.log",
    ]
    third = loom_logs(failing.repo, run_id, "--job", "build", "--step", "2")
    assert (third.stdout, third.stderr) == ("to stderr\n", "--- step 2 passed: echo to stderr >&2\n")
    beyond = loom_logs(failing.repo, run_id, "--job", "build", "--step", "4")
    assert (beyond.returncode, beyond.stderr) == (1, 'loom logs: job "build" has no step 4 (it ran 3)\n')
    zero = loom_logs(failing.repo, run_id, "--step", "0")  # 1-based: a usage error
    assert zero.returncode == 2
    unknown = loom_logs(failing.repo, run_id, "--job", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr == f'loom logs: run {run_id} has no job "nope"\n'
    missing = loom_logs(failing.repo, "loom-run-local-1")
    assert missing.returncode == 1 and missing.stderr.startswith("loom logs: no receipt for run loom-run-local-1")


def test_loom_logs_on_a_passing_run(passing: Result) -> None:
    run_id = passing.receipt["run_id"]
    proc = loom_logs(passing.repo, run_id)
    assert proc.returncode == 0
    assert (proc.stdout, proc.stderr) == ("", f"run {run_id}: success\n")
    job = loom_logs(passing.repo, run_id, "--job", "one")
    assert job.stdout == "one\n"


def test_receipt_is_printed_even_for_a_run_outside_the_repo_root(passing: Result, tmp_path: Path) -> None:
    """`--workflow` from another folder: the repo root is the workflow's git top level."""
    env = loom_env()
    proc = subprocess.run([*LOOM, "run", "--local", "--workflow",
                           str(passing.repo / ".loom" / "workflow.yml")],
                          cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    receipt_line = proc.stderr.splitlines()[-1]
    assert receipt_line.startswith(f"receipt: {passing.repo.resolve() / '.loom' / '.runtime' / 'receipts'}/")
    assert os.listdir(tmp_path) == []


def run_on_tty(repo: Path, env: dict[str, str]) -> str:
    """`loom run --local` with stderr on a pseudo-terminal; returns what reached the terminal."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*LOOM, "run", "--local"], cwd=repo, stderr=follower, stdout=subprocess.PIPE,
                              env=env, timeout=90)
        os.close(follower)
        follower = -1
        data = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0
    return data.decode()


def test_colour_only_on_a_tty_without_no_color(passing: Result) -> None:
    env = {k: v for k, v in loom_env().items() if k != "NO_COLOR"}
    coloured = run_on_tty(passing.repo, env)
    assert "\x1b[32mpassed\x1b[0m" in coloured and "loom run \x1b[32mpassed\x1b[0m" in coloured
    plain = run_on_tty(passing.repo, {**env, "NO_COLOR": "1"})
    # no colour codes (a live region, when TERM allows one, still moves the cursor)
    assert not re.search("\x1b\\[[0-9;]*m", plain) and "loom run passed" in plain
    piped = run_loom(passing.repo, "run", "--local", env=env)  # stderr is a pipe: no colour
    assert "\x1b[" not in piped.stderr


def test_failing_job_is_the_first_to_fail_by_finish_time(tmp_path: Path) -> None:
    """`late` is declared first but fails only once `early`'s failure is recorded in the logs."""
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        default:
          target: linux
        late:
          stage: s
          script:
            - >-
              f="$CI_PROJECT_DIR/../../logs/$LOOM_RUN_ID/jobs/early/summary.json"; i=0;
              while [ ! -e "$f" ] && [ $i -lt 400 ]; do i=$((i+1)); sleep 0.05; done; test -e "$f"; exit 6
        early:
          stage: s
          script: [exit 5]
    """)
    result = run_loom(repo, "run", "--local", "-j", "2")
    assert result.code == 1, result.stderr
    assert result.job_summary("late")["exit_code"] == 6  # it really waited for `early`
    manifest = load(Path(result.receipt["pipeline_manifest_path"]))
    assert (manifest["failing_job_id"], manifest["failing_job_manifest_path"]) == (
        "early", "jobs/early/manifest.json")
    assert [j["id"] for j in manifest["jobs"]] == ["late", "early"]
    assert result.receipt["error"] == 'job "early" failed (exit code 5) (and 1 more)'
    assert result.stderr.splitlines()[-1] == 'loom run: job "early" failed (exit code 5) (and 1 more)'


def test_loom_logs_for_a_skipped_job_and_from_a_subfolder(failing: Result) -> None:
    run_id = failing.receipt["run_id"]
    skipped = loom_logs(failing.repo, run_id, "--job", "deploy")
    assert skipped.returncode == 0
    assert (skipped.stdout, skipped.stderr) == (
        "", 'job "deploy" skipped (needs "test", which failed); it ran no step\n')
    sub = failing.repo / "some" / "folder"
    sub.mkdir(parents=True, exist_ok=True)
    from_sub = loom_logs(sub, run_id)
    assert (from_sub.returncode, from_sub.stdout) == (0, "art\nbefore\n")


def test_loom_logs_after_a_run_that_found_no_workflow(tmp_path: Path) -> None:
    outside = run_loom(tmp_path, "run", "--local")  # no repo at all: nowhere to keep a receipt, nothing made
    assert outside.code == 1 and outside.stderr == (
        f"loom run: no .loom/workflow.yml found in {tmp_path} or any parent folder\n")
    assert list(tmp_path.iterdir()) == []
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)  # a repo without a workflow: a receipt
    result = run_loom(tmp_path, "run", "--local")
    assert result.code == 1
    missing = tmp_path / ".loom" / "workflow.yml"
    error = f"invalid workflow: workflow.yml: cannot read {missing}: No such file or directory"
    assert result.stderr.splitlines()[-3:] == [
        "loom run failed", f"receipt: {result.receipt_path}", f"loom run: {error}"]
    assert result.receipt["error"] == error
    logs = loom_logs(tmp_path)
    assert logs.returncode == 0, logs.stderr
    assert logs.stderr == f"run {result.receipt['run_id']}: failure: {error}\n"
    nothing = loom_logs(tmp_path / ".loom")  # still inside the folder that holds the runtime dir
    assert nothing.returncode == 0


def test_quiet_terminal_still_prints_the_error_when_no_receipt_was_written() -> None:
    import io

    from loomrun.supervisor.terminal import Terminal

    out = io.StringIO()
    Terminal(quiet=True, stream=out).finished(False, None, "cannot write the receipt: disk full")
    assert out.getvalue() == "loom run failed\nloom run: cannot write the receipt: disk full\n"
    out = io.StringIO()
    Terminal(quiet=True, stream=out).finished(False, "/r.json", "boom")
    assert out.getvalue() == "loom run failed\nreceipt: /r.json\n"


def job_phase_statuses(result: Result, job: str) -> list[tuple[str, str, str | None]]:
    return [(e["type"], e["phase_code"], e.get("status"))
            for e in events(Path(result.receipt["events_jsonl_path"]))
            if e["scope"] == "job" and e.get("job_id") == job]


def test_job_phases_run_in_order(failing: Result) -> None:
    phases = job_phase_statuses(failing, "build")
    assert [(t, c) for t, c, _ in phases] == [
        (kind, code) for code in ("job.provider_prepare", "job.execution", "job.cache_save", "job.cleanup")
        for kind in ("phase_started", "phase_finished")]
    assert {s for t, _, s in phases if t == "phase_finished"} == {"success"}
    codes = [c for t, c, _ in job_phase_statuses(failing, "test") if t == "phase_started"]
    assert codes == ["job.provider_prepare", "job.artifact_restore", "job.execution", "job.cleanup"]


def test_a_failed_step_fails_the_execution_phase(failing: Result) -> None:
    finished = {c: s for t, c, s in job_phase_statuses(failing, "test") if t == "phase_finished"}
    assert finished["job.execution"] == "failed"
    assert finished["job.provider_prepare"] == "success"


def test_an_ordinary_run_logs_no_writer_errors(tmp_path: Path) -> None:
    jobs = "".join(f"j{i}:\n  stage: s\n  target: linux\n  script: [\"true\"]\n" for i in range(30))
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [s]\n" + jobs)
    result = run_loom(repo, "run", "--local", "-j", "2")
    assert result.code == 0, result.stderr
    errors = [e for e in events(Path(result.receipt["events_jsonl_path"])) if e["type"] == "error"]
    assert errors == []


@pytest.mark.parametrize("limits", ["", "limits: {pids: 64}"], ids=["no-limits", "limits"])
def test_a_daemon_the_script_killed_is_gone_while_the_step_still_runs(tmp_path: Path, limits: str) -> None:
    """The worker is a subreaper: a daemon a step started (its parent exited) becomes the worker's
    child, and once killed it must be reaped at once, not at the job's end: a zombie still answers
    `kill -0`, so a script (or a test suite run as a job) waiting for it to go would wait forever."""
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        default:
          target: linux
        job:
          stage: s
          {limits}
          script:
            - {KILLED_DAEMON_STEP}
    """)
    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    [(stream, line)] = output_events(result.logs_dir / "jobs/job/user/script/01/events.jsonl")
    assert stream == "stdout" and line.startswith("gone after "), line


def test_tools_that_honour_gitignore_see_the_workspace_as_a_repository_root(tmp_path: Path) -> None:
    """The snapshot lives under `.loom/.runtime/`, whose .gitignore says `*`: ruff (like ripgrep
    and fd) reads every parent's .gitignore up to the repository's root, so `ruff check .` in a job
    found no file and passed. It must lint the workspace; git in the job still sees the user's repo."""
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        default:
          target: linux
        lint:
          stage: s
          script:
            - git rev-parse --show-toplevel
            - {sys.executable} -m ruff check --no-cache --isolated --select F401 --output-format concise .
    """)
    (repo / "app.py").write_text("import os\n")  # untracked, not ignored: in the snapshot
    result = run_loom(repo, "run", "--local")
    assert result.code == 1, result.stderr
    lines = output_events(result.logs_dir / "jobs/lint/user/script/02/events.jsonl")
    assert any("app.py:1:8: F401" in line for _, line in lines), lines
    [(_, top)] = output_events(result.logs_dir / "jobs/lint/user/script/01/events.jsonl")
    assert Path(top) == repo.resolve()


@pytest.mark.parametrize("job", ["  target: linux\n  script: ['touch ran']\n", "  script: true\n"],
                         ids=["valid", "invalid-workflow"])  # invalid: no target, a string script
def test_a_writer_that_cannot_write_fails_the_run_first_whatever_the_load_found(tmp_path: Path, job: str) -> None:
    """The supervisor reads the writer's answer to RunStarted only after the load (the two overlap):
    a writer that cannot make the logs dir still decides the run's error, and nothing runs."""
    repo = make_repo(tmp_path / "repo", f"version: v1\nstages: [s]\na:\n  stage: s\n{job}")
    runtime = repo / ".loom" / ".runtime"
    runtime.mkdir()
    (runtime / "logs").write_text("not a folder")
    result = run_loom(repo, "run", "--local")
    assert result.code == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith("loom run: cannot write logs: "), result.stderr
    assert "Traceback" not in result.stderr
    assert not list((runtime / "workspaces").glob("*/ran")) and not (runtime / "receipts").exists()
