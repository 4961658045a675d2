"""`loom logs [RUN_ID] [--job NAME]`: walk the diagnostics ladder and print output. `loom` process.

receipt -> pipeline/manifest.json (failing_job_manifest_path) -> jobs/<id>/manifest.json
(failing_section, failing_step_events_path) -> the step's events. Only these pointers are used.
Output lines go to stdout (data); the one-line headers go to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from loomrun.errors import LoomError
from loomrun.repo import discover_repo_root, runtime_dir


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise LoomError(f"missing {path}") from exc
    except (OSError, ValueError) as exc:
        raise LoomError(f"cannot read {path}: {exc}") from exc


def find_runtime() -> Path:
    """The repo's runtime dir; a run that failed to start (no workflow) still left its receipt there."""
    try:
        return runtime_dir(discover_repo_root())
    except LoomError:
        here = Path.cwd().resolve()
        for folder in (here, *here.parents):
            if (runtime_dir(folder) / "receipts").is_dir():
                return runtime_dir(folder)
        raise


def find_receipt(runtime: Path, run_id: str | None) -> Path:
    receipts = runtime / "receipts"
    if run_id is not None:
        path = receipts / f"{run_id}.json"
        if not path.exists():
            raise LoomError(f"no receipt for run {run_id} in {receipts}")
        return path
    runs = sorted([*receipts.glob("loom-run-local-*.json"), *receipts.glob("loom-run-remote-*.json")],
                  key=lambda p: int(p.stem.rsplit("-", 1)[-1]))
    if not runs:
        raise LoomError(f"no runs recorded in {receipts}")
    return runs[-1]


def event_lines(path: Path) -> list[str]:
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            if ev.get("type") == "output":
                out.extend(ev["lines"] if "lines" in ev else [ev.get("line", "")])
            elif ev.get("type") == "error":
                out.append(f"[{ev.get('code')}] {ev.get('message')}")
    return out


def _emit(lines: list[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def main(run_id: str | None, job: str | None) -> int:
    runtime = find_runtime()
    from loomrun.supervisor.abandoned import reap_with_oneshot_writer

    reap_with_oneshot_writer(runtime)  # a dead run shows as abandoned, not as missing
    receipt = _read(find_receipt(runtime, run_id))
    logs_dir = Path(receipt["logs_dir"])
    pipeline = _read(Path(receipt["pipeline_manifest_path"]))
    if job is not None:
        entry = next((j for j in pipeline.get("jobs", []) if j["id"] == job), None)
        if entry is None:
            raise LoomError(f'run {receipt["run_id"]} has no job "{job}"')
        manifest = _read(logs_dir / entry["manifest_path"])
        if not manifest.get("steps"):  # skipped or canceled before it ran: say why
            summary = _read(logs_dir / entry["summary_path"])
            why = summary.get("message")
            print(f'job "{job}" {summary.get("status")}{f" ({why})" if why else ""}; it ran no step',
                  file=sys.stderr)
        for step in manifest.get("steps", []):
            print(f'job "{job}" step {step["index"]} ({step["status"]}, exit code {step["exit_code"]})',
                  file=sys.stderr)
            _emit(event_lines(logs_dir / step["events_path"]))
        return 0
    failing = pipeline.get("failing_job_manifest_path")
    if not failing:
        print(f'run {receipt["run_id"]}: {receipt.get("status")}'
              f'{": " + receipt["error"] if receipt.get("error") else ""}', file=sys.stderr)
        return 0
    manifest = _read(logs_dir / failing)
    job_id = manifest.get("job_id")
    section = manifest.get("failing_section")
    events = manifest.get("failing_step_events_path")
    if events:
        failed: dict[str, Any] = next((s for s in manifest["steps"] if s["events_path"] == events), {})
        print(f'run {receipt["run_id"]}: job "{job_id}" failed in step {failed.get("index")} '
              f'(exit code {failed.get("exit_code")})', file=sys.stderr)
        _emit(event_lines(logs_dir / events))
        return 0
    sec = next((s for s in manifest.get("system_sections", []) if s["name"] == section), None)
    print(f'run {receipt["run_id"]}: job "{job_id}" failed in section {section}', file=sys.stderr)
    if sec is not None:
        _emit(event_lines(logs_dir / sec["events_path"]))
    return 0
