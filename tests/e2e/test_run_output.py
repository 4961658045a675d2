"""`loom run --local`: artifacts `when`/`exclude` (spec §2.3, §3.2), a workflow that does not load
(§1.1, §10), and output-heavy steps (§3.3, §5.4): every line kept, in order, whatever the bytes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from tests.e2e.run_helpers import check_logs_dir, events, output_events, step_doc, terminal
from tests.process.runner import load, make_repo, run_loom


def test_artifacts_when_on_failure_always_and_on_success(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        default:
          target: linux
        fail-keep:
          stage: s
          allow_failure: true
          script: ["mkdir -p r && echo report > r/report.txt && echo tmp > r/t.tmp", "exit 1"]
          artifacts: {paths: ["r/"], exclude: ["r/*.tmp"], when: on_failure}
        fail-always:
          stage: s
          allow_failure: true
          script: ["echo crash > crash.log", "exit 1"]
          artifacts: {paths: ["*.log"], when: always}
        fail-default:
          stage: s
          allow_failure: true
          script: ["echo lost > lost.txt", "exit 1"]
          artifacts: {paths: [lost.txt]}
        pass-on-failure:
          stage: s
          script: ["echo unused > unused.txt"]
          artifacts: {paths: [unused.txt], when: on_failure}
        pass-always:
          stage: s
          script: ["mkdir -p deep/er && printf abc > deep/er/f.bin"]
          artifacts: {paths: ["deep/**/*.bin"], when: always}
    """)
    result = run_loom(repo, "run", "--local", "-j", "1")
    assert result.code == 0, result.stderr

    def arts(job: str) -> list[dict[str, object]]:
        return result.job_manifest(job)["artifacts"]  # type: ignore[no-any-return]

    def entry(path: str, data: bytes) -> dict[str, object]:
        return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    assert arts("fail-keep") == [entry("r/report.txt", b"report\n")]
    assert arts("fail-always") == [entry("crash.log", b"crash\n")]
    assert arts("fail-default") == []  # on_success is the default
    assert arts("pass-on-failure") == []
    assert arts("pass-always") == [entry("deep/er/f.bin", b"abc")]
    jobs = result.logs_dir / "jobs"
    assert (jobs / "fail-keep" / "artifacts" / "r" / "report.txt").read_text() == "report\n"
    assert not (jobs / "fail-keep" / "artifacts" / "r" / "t.tmp").exists()
    assert (jobs / "pass-always" / "artifacts" / "deep" / "er" / "f.bin").read_bytes() == b"abc"
    assert not (jobs / "fail-default" / "artifacts").exists()
    sections = {s["name"] for s in result.job_manifest("pass-on-failure")["system_sections"]}
    assert "artifact_extract" not in sections and {"provider", "cleanup"} <= sections
    extract = load(jobs / "fail-keep" / "system" / "artifact_extract" / "summary.json")
    assert (extract["status"], extract["files"]) == ("success", 1)


INVALID = """\
version: v1
stages: [build]
build:
  stage: build
  target: linux
  script: echo hi
"""


def test_an_invalid_workflow_still_writes_a_receipt_and_logs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", INVALID)
    result = run_loom(repo, "run", "--local")
    assert result.code == 1
    message = 'expected sequence for "script", got string'
    assert terminal(result, summary=False) == [
        f"workflow.yml:6 {message}",
        "loom run failed",
        f"receipt: {result.receipt_path}",
        f"loom run: invalid workflow: workflow.yml:6 {message}",
    ]
    receipt = result.receipt
    assert (receipt["status"], receipt["exit_code"]) == ("failure", 1)
    assert receipt["error"] == f"invalid workflow: workflow.yml:6 {message}"
    assert receipt["jobs"] == []
    errors = receipt["workflow_errors"]
    assert len(errors) == 1
    assert {k: errors[0][k] for k in ("code", "pointer", "line", "message")} == {
        "code": "WF_SCHEMA_V1", "pointer": "/build/script", "line": 6, "message": message}
    assert {"column", "hint"} <= errors[0].keys()
    assert Path(receipt["logs_dir"]).is_dir()
    summary = load(Path(receipt["pipeline_summary_path"]))
    assert (summary["status"], summary["exit_code"], summary["error"]) == ("failure", 1, receipt["error"])
    check_logs_dir(result.logs_dir)
    assert not list((repo / ".loom" / ".runtime").glob("workspaces/*"))


def test_a_workflow_that_is_not_yaml_still_writes_a_receipt(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [a\n  b: ]\n")
    result = run_loom(repo, "run", "--local")
    assert result.code == 1
    lines = result.stderr.splitlines()
    assert re.fullmatch(r"workflow\.yml:\d+ .+", lines[0]), lines
    assert lines[-3:-1] == ["loom run failed", f"receipt: {result.receipt_path}"]
    assert lines[-1].startswith("loom run: invalid workflow: workflow.yml:")
    assert result.receipt["status"] == "failure"
    check_logs_dir(result.logs_dir)


def test_missing_workflow_file_still_writes_a_receipt(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", INVALID)
    result = run_loom(repo, "run", "--local", "--workflow", str(repo / ".loom" / "nope.yml"))
    assert result.code == 1
    assert result.stderr.splitlines()[-3] == "loom run failed"
    assert result.receipt["status"] == "failure" and result.receipt["error"]


OUTPUT = """
version: v1
stages: [s]
default:
  target: linux
many:
  stage: s
  script: ["seq 1 200000", "seq 1 5 >&2"]
tail:
  stage: s
  script: ['printf ''a\\nb\\nlast''', "printf 'err-last' >&2", "printf ''"]
bytes:
  stage: s
  script:
    - 'printf ''ok\\n\\377\\376bad\\nafter\\n'''
    - 'printf ''\\303'''
"""


def test_output_heavy_and_odd_output(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", OUTPUT)
    result = run_loom(repo, "run", "--local", "--stream")
    assert result.code == 0, result.stderr
    # 200,000 lines: every one, in order, counted
    assert result.step_lines("many", 1) == [str(i) for i in range(1, 200_001)]
    assert step_doc(result, "many", 1)["output_lines"] == 200_000
    assert output_events(result.logs_dir / "jobs/many/user/script/02/events.jsonl") == [
        ("stderr", str(i)) for i in range(1, 6)]
    streamed = [line for line in result.stderr.splitlines() if line.startswith("[many] ")]
    assert streamed == [f"[many] {i}" for i in range(1, 200_001)] + [f"[many] {i}" for i in range(1, 6)]
    # a last line without a trailing newline is kept; an empty output has no line
    assert result.step_lines("tail", 1) == ["a", "b", "last"]
    assert step_doc(result, "tail", 1)["output_lines"] == 3
    assert output_events(result.logs_dir / "jobs/tail/user/script/02/events.jsonl") == [("stderr", "err-last")]
    assert step_doc(result, "tail", 3)["output_lines"] == 0
    assert result.step_lines("tail", 3) == []
    # bytes that are not UTF-8 are replaced, the line and the ones around it survive
    assert result.step_lines("bytes", 1) == ["ok", "\ufffd\ufffdbad", "after"]
    assert result.step_lines("bytes", 2) == ["\ufffd"]
    for step in ("01", "02"):
        raw = (result.logs_dir / "jobs/bytes/user/script" / step / "events.jsonl").read_bytes()
        raw.decode("utf-8")  # strict: the events file itself is valid UTF-8
    assert [j["status"] for j in result.receipt["jobs"]] == ["success"] * 3
    check_logs_dir(result.logs_dir)
    seqs = [e["seq"] for e in events(result.logs_dir / "jobs/many/user/script/01/events.jsonl")]
    assert seqs == list(range(1, len(seqs) + 1))
    json.dumps(result.receipt)


def test_artifacts_never_follow_a_link_out_of_the_workspace(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        x:
          stage: s
          target: linux
          script: ["ln -s /etc escape && ln -s /etc/hostname direct"]
          artifacts:
            paths: ["escape/hostname", "escape/*", direct]
    """)
    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    [entry] = result.job_manifest("x")["artifacts"]
    assert (entry["path"], entry["symlink"], entry["size"]) == ("direct", "/etc/hostname", 0)
    kept = result.logs_dir / "jobs" / "x" / "artifacts"
    assert sorted(p.name for p in kept.iterdir()) == ["direct"]
    assert (kept / "direct").is_symlink()  # a link stays a link: nothing was read through it


def test_more_than_99_steps_use_three_digit_folders(tmp_path: Path) -> None:
    steps = ", ".join(['":"'] * 100 + ['"exit 7"'])
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        x:
          stage: s
          target: linux
          script: [{steps}]
    """)
    result = run_loom(repo, "run", "--local")
    assert result.code == 1
    manifest = result.job_manifest("x")
    dirs = [s["dir"] for s in manifest["steps"]]
    assert dirs[0] == "jobs/x/user/script/01" and dirs[98] == "jobs/x/user/script/99"
    assert dirs[99:] == ["jobs/x/user/script/100", "jobs/x/user/script/101"]
    assert manifest["failing_step_events_path"] == "jobs/x/user/script/101/events.jsonl"
    assert events(result.logs_dir / manifest["failing_step_events_path"])[-1]["exit_code"] == 7
