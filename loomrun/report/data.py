"""A run's documents as the report's data. Runs in the `loom` process; reads only.

From the receipt: pipeline/manifest.json (jobs in declaration order), each job's summary and
manifest, each step's summary (times, command), the failing step's output (its last
`OUTPUT_LINES` lines), and the dependency map from the receipt's Graph IR for the critical path.
Times are milliseconds from the run's start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from loomrun.durable import read_mapping

OUTPUT_LINES = 500


def _ms(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp() * 1000
    except ValueError:
        return None


def dependencies(graph: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each job's `needs`, or every job of the stages before it (spec §3.2), from the Graph IR."""
    nodes = graph.get("nodes", [])
    order = {stage: i for i, stage in enumerate(graph.get("stages", []))}
    deps: dict[str, list[str]] = {}
    for node in nodes:
        if "needs" in node:
            deps[node["id"]] = list(node["needs"])
        else:
            mine = order.get(node.get("stage"), 0)
            deps[node["id"]] = [n["id"] for n in nodes if order.get(n.get("stage"), 0) < mine]
    return deps


def collect(receipt_path: Path) -> dict[str, Any]:
    receipt = read_mapping(receipt_path)
    logs_dir = Path(receipt.get("logs_dir", receipt_path.parent))
    origin = _ms(receipt.get("started_at")) or 0.0
    pipeline = read_mapping(Path(receipt.get("pipeline_manifest_path", logs_dir / "pipeline" / "manifest.json")))

    def rel(stamp: Any) -> float | None:
        at = _ms(stamp)
        return None if at is None else round(at - origin, 3)

    jobs = []
    for entry in pipeline.get("jobs", []):
        summary = read_mapping(logs_dir / entry.get("summary_path", ""))
        manifest = read_mapping(logs_dir / entry.get("manifest_path", ""))
        steps = []
        for step in manifest.get("steps", []):
            doc = read_mapping(logs_dir / step.get("summary_path", ""))
            steps.append({"index": step.get("index"), "status": step.get("status"), "exit_code": step.get("exit_code"),
                          "command": doc.get("command", ""), "start": rel(doc.get("started_at")),
                          "end": rel(doc.get("finished_at"))})
        jobs.append({
            "id": entry.get("id"), "stage": entry.get("stage") or summary.get("stage", ""),
            "status": summary.get("status") or entry.get("status", ""), "provider": summary.get("provider", ""),
            "failure_kind": summary.get("failure_kind"), "message": summary.get("message", ""),
            "allow_failure": bool(summary.get("allow_failure")),
            "start": rel(summary.get("started_at")) if summary.get("started_at") else None,
            "end": rel(summary.get("finished_at")), "steps": steps,
        })
    return {
        "run_id": receipt.get("run_id", receipt_path.stem), "status": receipt.get("status", "unknown"),
        "error": receipt.get("error"), "started_at": receipt.get("started_at"),
        "duration_ms": receipt.get("duration_ms"), "repo_root": receipt.get("repo_root", ""),
        "jobs": jobs, "critical_path": _critical(jobs, dependencies(receipt.get("graph_ir") or {})),
        "failing": _failing(logs_dir, pipeline),
    }


def _critical(jobs: Sequence[Mapping[str, Any]], deps: Mapping[str, Sequence[str]]) -> list[str]:
    from loomrun.supervisor.terminal.summary import critical_path

    spans = {j["id"]: (j["start"], j["end"]) for j in jobs if j["start"] is not None and j["end"] is not None}
    return critical_path(spans, deps)


def tail_lines(events: Path, keep: int) -> tuple[list[str], int]:
    """The last `keep` output lines of an events file, and how many came before them."""
    from collections import deque

    from loomrun.commands.logs import LineJoiner

    last: deque[str] = deque(maxlen=keep)
    total = 0
    joiner = LineJoiner()
    try:
        with open(events, encoding="utf-8") as fh:
            for raw in fh:
                try:
                    lines = joiner.feed(json.loads(raw))
                except (ValueError, KeyError, TypeError):
                    continue
                total += len(lines)
                last.extend(lines)
    except OSError:
        return [], 0
    rest = joiner.rest()
    total += len(rest)
    last.extend(rest)
    return list(last), total - len(last)


def _failing(logs_dir: Path, pipeline: Mapping[str, Any]) -> dict[str, Any] | None:
    """The failing job's failing step (or system section): where, and its last output lines."""
    path = pipeline.get("failing_job_manifest_path")
    if not path:
        return None
    manifest = read_mapping(logs_dir / path)
    events = manifest.get("failing_step_events_path")
    where: dict[str, Any] = {"job": manifest.get("job_id"), "section": manifest.get("failing_section")}
    if events:
        step: dict[str, Any] = next((s for s in manifest.get("steps", []) if s.get("events_path") == events), {})
        doc = read_mapping(logs_dir / step.get("summary_path", ""))
        where.update(step=step.get("index"), exit_code=step.get("exit_code"), command=doc.get("command", ""))
    else:
        sec = next((s for s in manifest.get("system_sections", []) if s["name"] == where["section"]), None)
        events = sec["events_path"] if sec else None
    where["lines"], where["cut"] = tail_lines(logs_dir / events, OUTPUT_LINES) if events else ([], 0)
    return where
