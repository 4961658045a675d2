"""Secrets (spec §7) through real runs: delivery as a file or a variable, redaction in every byte
loom writes, and the SECRETS_* failures."""

from __future__ import annotations

from pathlib import Path

from tests.process.runner import load, loom_env, make_repo, run_loom

VALUE = "s3cr3t-Value-42"

WORKFLOW = """
version: v1
stages: [s]
use:
  stage: s
  target: linux
  secrets:
    TOKEN: {ref: "env://APP_TOKEN", file: false}
    KEYFILE: {ref: "env://APP_TOKEN"}
  script:
    - echo "token=$TOKEN"; echo "file=$(cat "$KEYFILE") mode=$(stat -c %a "$KEYFILE")"; echo "$KEYFILE" > keypath
    - echo "$TOKEN" >&2; exit 3
"""


def test_secret_values_reach_the_job_and_never_the_disk(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    result = run_loom(repo, "run", "--local", "--stream", env=loom_env(APP_TOKEN=VALUE))
    assert result.code == 1
    assert result.step_lines("use", 1) == ["token=[REDACTED:SECRET_TOKEN]",
                                           "file=[REDACTED:SECRET_TOKEN] mode=600"]
    assert result.step_lines("use", 2) == ["[REDACTED:SECRET_TOKEN]"]
    assert VALUE not in result.stderr + result.stdout
    for path in (repo / ".loom/.runtime").rglob("*"):
        if path.is_file() and "workspaces" not in path.parts:
            assert VALUE.encode() not in path.read_bytes(), path
    keyfile = Path((Path(result.receipt["snapshot_path"]) / "keypath").read_text().strip())
    assert not keyfile.exists()  # removed in cleanup
    assert [s["name"] for s in result.job_manifest("use")["system_sections"]][:2] == ["secrets", "provider"]


def test_required_secret_missing_fails_before_the_script(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    use:
      stage: s
      target: linux
      secrets:
        NOPE: {ref: "env://LOOM_TEST_UNSET_SECRET"}
        OPTIONAL: {ref: "env://ALSO_UNSET", required: false}
      script: [touch ran]
    """)
    result = run_loom(repo, "run", "--local")
    assert result.code == 1
    summary = result.job_summary("use")
    assert summary["failure_kind"] == "secrets_error"
    assert "SECRETS_REQUIRED_MISSING" in summary["message"]
    assert result.job_manifest("use")["failing_section"] == "secrets"
    section = load(result.logs_dir / "jobs/use/system/secrets/summary.json")
    assert section["error_code"] == "SECRETS_REQUIRED_MISSING"
    assert not (Path(result.receipt["snapshot_path"]) / "ran").exists()


def test_debug_trace_with_secrets_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    result = run_loom(repo, "run", "--local", env=loom_env(APP_TOKEN=VALUE, LOOM_DEBUG_TRACE="1"))
    assert result.code == 1
    assert "SECRETS_UNSAFE_DEBUG_TRACE" in result.job_summary("use")["message"]


ARTIFACT_WORKFLOW = """
version: v1
stages: [build, use]
make:
  stage: build
  target: linux
  secrets:
    TOKEN: {ref: "env://APP_TOKEN", file: false}
  script:
    - mkdir -p "out/dir-$TOKEN" && echo data > "out/$TOKEN.txt" && ln -s "target-$TOKEN" out/link
    - ls out | sed 's/^/listed /'
  artifacts:
    paths: [out/, "literal-$TOKEN"]
after:
  stage: use
  target: linux
  needs: [make]
  script:
    - test -f "out/$APP_TOKEN.txt" && test "$(readlink out/link)" = "target-$APP_TOKEN" && echo restored
"""


def test_a_value_in_an_artifacts_path_is_redacted_in_its_metadata(tmp_path: Path) -> None:
    """A job names its artifact files after a secret: the manifest lists them (paths, a link's target)
    with [REDACTED:SECRET_TOKEN], and no other document or name loom writes holds the value. The
    stored artifact tree keeps the names the job gave (it is the job's output, restored as made, like
    the workspace: the dependent job gets the real names)."""
    repo = make_repo(tmp_path / "repo", ARTIFACT_WORKFLOW)
    result = run_loom(repo, "run", "--local", env=loom_env(APP_TOKEN=VALUE))
    assert result.code == 0, result.stderr
    artifacts = result.job_manifest("make")["artifacts"]
    assert sorted((a["path"], a.get("symlink")) for a in artifacts) == [
        ("out/[REDACTED:SECRET_TOKEN].txt", None), ("out/dir-[REDACTED:SECRET_TOKEN]", None),
        ("out/link", "target-[REDACTED:SECRET_TOKEN]")]
    assert sorted(result.step_lines("make", 2)) == ["listed [REDACTED:SECRET_TOKEN].txt",
                                                    "listed dir-[REDACTED:SECRET_TOKEN]", "listed link"]
    assert result.step_lines("after", 1) == ["restored"]
    stored = result.logs_dir / "jobs" / "make" / "artifacts"
    assert (stored / f"out/{VALUE}.txt").read_text() == "data\n"
    assert VALUE not in result.stdout + result.stderr
    for path in (repo / ".loom/.runtime").rglob("*"):
        if "workspaces" in path.parts or path.is_relative_to(stored):
            continue
        assert VALUE not in str(path), path
        if path.is_file():
            assert VALUE.encode() not in path.read_bytes(), path
