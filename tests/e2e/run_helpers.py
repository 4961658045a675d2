"""Shared checks for the `loom run --local` end-to-end tests (host provider): the on-disk contract of
spec §5 asserted field by field. Runs in the test process; the runs themselves are real processes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.process.runner import Result, load

SCHEMA = "loom.runtime.logs.v2"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
DURATION = re.compile(r" in \d+\.\d\ds")
SECONDS = re.compile(r"\d+\.\d\ds")
EVENT_TYPES = {"phase_started", "phase_finished", "output", "step_finished", "error"}
SCOPES = {"run", "pipeline", "job", "step", "section"}
PHASE_CODES = {
    "run.bootstrap", "run.pipeline_execute", "pipeline.execute", "run.finalize", "job.provider_prepare",
    "job.cache_restore", "job.artifact_restore", "job.execution", "job.cache_save", "job.cleanup",
}


def terminal(result: Result, summary: bool = True) -> list[str]:
    """stderr lines with job durations normalised to ` in N.NNs`, without the summary table (from
    the blank line before it to its `wall time` line and warnings; tests/e2e/test_terminal.py).
    Every run but `-q` ends with the table (spec §11): it must be there unless `summary` is False
    (a run that ran no job), and then it must not."""
    lines = result.stderr.splitlines()
    if not summary:
        assert "" not in lines and not any(line.startswith("wall time ") for line in lines), lines
        return [DURATION.sub(" in N.NNs", line) for line in lines]
    assert "" in lines, f"no summary table:\n{result.stderr}"
    start = lines.index("")
    end = start + 1
    while end < len(lines) and not lines[end].startswith("loom run "):
        end += 1
    assert lines[start + 1].startswith("job ") and " status " in lines[start + 1], lines[start:end]
    assert any(line.startswith("wall time ") for line in lines[start:end]), lines
    lines = lines[:start] + lines[end:]
    return [DURATION.sub(" in N.NNs", line) for line in lines]


def normal(lines: list[str]) -> list[str]:
    return [SECONDS.sub("N.NNs", line) for line in lines]


def summary_block(lines: list[str]) -> list[str]:
    """From the blank line before the table to the wall-time line (and any warnings under it)."""
    start = lines.index("")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("wall time "))
    while end + 1 < len(lines) and not lines[end + 1].startswith("loom run "):
        end += 1
    return lines[start:end + 1]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def check_event(path: Path, seq: int, ev: dict[str, Any]) -> None:
    where = f"{path}:{seq} {ev}"
    assert ev["seq"] == seq, where
    assert TS.match(ev["ts"]), where
    assert ev["type"] in EVENT_TYPES, where
    assert ev["scope"] in SCOPES, where
    if "phase_code" in ev:
        assert ev["phase_code"] in PHASE_CODES, where
        assert ev["phase_family"] == ev["phase_code"].split(".")[0], where
    if ev["type"] == "phase_finished":
        assert ev["status"] in ("success", "failed", "failure", "canceled", "skipped"), where
    elif ev["type"] == "output":
        assert ev["stream"] in ("stdout", "stderr"), where
        assert isinstance(ev.get("line"), str) or isinstance(ev.get("lines"), list), where
    elif ev["type"] == "step_finished":
        assert isinstance(ev["exit_code"], int), where
    elif ev["type"] == "error":
        assert ev["code"] and isinstance(ev["message"], str), where


def events(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"half line at the end of {path}"
    out = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    for seq, ev in enumerate(out, start=1):
        check_event(path, seq, ev)
    return out


def check_logs_dir(logs: Path) -> None:
    """Every document inside logs/ (artifacts excepted) carries the v2 schema; every JSONL is valid."""
    docs = 0
    for path in sorted(logs.rglob("*")):
        if "artifacts" in path.relative_to(logs).parts:
            continue
        if path.suffix == ".json":
            assert load(path)["schema_version"] == SCHEMA, path
            docs += 1
        elif path.suffix == ".jsonl":
            events(path)
    assert docs >= 2, f"no documents in {logs}"


def step_doc(result: Result, job: str, index: int) -> dict[str, Any]:
    return load(result.logs_dir / "jobs" / job / "user" / "script" / f"{index:02d}" / "summary.json")


def output_events(path: Path) -> list[tuple[str, str]]:
    """(stream, line) for every output line of one events file, in order."""
    out: list[tuple[str, str]] = []
    for ev in events(path):
        if ev["type"] == "output":
            for line in ev["lines"] if "lines" in ev else [ev["line"]]:
                out.append((ev["stream"], line))
    return out
