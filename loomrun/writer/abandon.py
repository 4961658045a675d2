"""The documents of a run whose supervisor died (spec §5.5): a writer process (a run's writer, or
the one-shot writer of `loom logs` / `loom cache`) marks them `failure` / `abandoned`.

What is known after the supervisor's death, and from where: the facts its run lock's sidecar kept
(`supervisor/locks.py`: command, repo root, workflow path, start time, pipeline id; once the jobs
were about to start, the snapshot, the job roster and the Graph IR), the run id itself (it embeds
the start time), and what its writer had put on disk (job summaries, step and section folders, temp
documents not yet renamed). `finished_at` is when the next `loom` command found the run dead, and
the receipt says so (`abandoned.finished_at`). A job that has no summary (it was running, or had
not started) is written one: `canceled`, with the reason. A receipt that was already complete (the
supervisor died after its writer finished) is kept as it is: it tells what happened.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from loomrun import __version__
from loomrun.durable import read_mapping
from loomrun.protocol import messages as m
from loomrun.writer.events import SCHEMA, rfc3339
from loomrun.writer.files import recover_temps, write_document
from loomrun.writer.runlog import run_kind

WHY = "abandoned: its supervisor died (the next loom command found it)"


def mark_abandoned(runtime: Path, run_id: str, facts: dict[str, Any] | None = None) -> Path | None:
    """Write a dead run's pipeline documents, job documents it lacks, and receipt. Returns the receipt."""
    facts = facts or {}
    found_ns = time.time_ns()
    logs_dir = runtime / "logs" / run_id
    receipt_path = runtime / "receipts" / f"{run_id}.json"
    old = read_mapping(receipt_path)
    if old.get("status") and old.get("finished_at"):
        return receipt_path  # its writer wrote the receipt last: the run had finished
    if logs_dir.is_dir():
        recover_temps(logs_dir)  # documents its writer had written but not yet made durable
    started_ns = _int(facts.get("started_ns")) or _ns_of(run_id) or found_ns
    pipeline_id = str(facts.get("pipeline_id") or f"loom-local-{run_id.rsplit('-', 1)[-1]}")
    jobs = [_job(logs_dir, run_id, pipeline_id, job_id, stage, found_ns) for job_id, stage in _roster(logs_dir, facts)]
    duration_ms = max(0, (found_ns - started_ns) // 1_000_000)
    summary_path, manifest_path = logs_dir / "pipeline" / "summary.json", logs_dir / "pipeline" / "manifest.json"
    counts = {"total": len(jobs), "success": 0, "failed": 0, "skipped": 0, "canceled": 0}
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    write_document(summary_path, {
        **read_mapping(summary_path), "schema_version": SCHEMA, "run_id": run_id, "pipeline_id": pipeline_id,
        "status": "failure", "exit_code": 1, "error": "abandoned", "started_at": rfc3339(started_ns),
        "finished_at": rfc3339(found_ns), "duration_ms": duration_ms, "jobs": counts})
    failing = min((j for j in jobs if j["status"] == "failed" and not j["allow_failure"]),
                  key=lambda j: j["finished_at"] or "", default=None)
    write_document(manifest_path, {
        "schema_version": SCHEMA, "run_id": run_id,
        "jobs": [{"id": j["id"], "stage": j["stage"], "status": j["status"],
                  "summary_path": f"jobs/{j['id']}/summary.json", "manifest_path": f"jobs/{j['id']}/manifest.json"}
                 for j in jobs],
        "failing_job_id": failing["id"] if failing else None,
        "failing_job_manifest_path": f"jobs/{failing['id']}/manifest.json" if failing else None})
    receipt: dict[str, Any] = {
        "schema_version": "v1", "kind": run_kind(run_id), "run_id": run_id, "pipeline_id": pipeline_id,
        "command": facts.get("command") or old.get("command"), "loom_version": __version__,
        "repo_root": facts.get("repo_root") or str(runtime.parent.parent),
        "workflow_path": facts.get("workflow_path") or old.get("workflow_path"),
        "started_at": rfc3339(started_ns), "finished_at": rfc3339(found_ns), "duration_ms": duration_ms,
        "status": "failure", "exit_code": 1, "error": "abandoned",
        "logs_dir": str(logs_dir), "events_jsonl_path": str(logs_dir / "events.jsonl"),
        "pipeline_summary_path": str(summary_path), "pipeline_manifest_path": str(manifest_path),
    }
    for key in ("snapshot_path", "snapshot_head_sha", "graph_ir"):
        if facts.get(key) is not None:
            receipt[key] = facts[key]
    receipt["jobs"] = [{k: j[k] for k in ("id", "status", "exit_code", "failure_kind", "duration_ms")} for j in jobs]
    receipt["abandoned"] = {
        "finished_at": "when the next loom command found the run dead, not when it died",
        "supervisor_pid": facts.get("pid"),
        "known_from": "the run lock's sidecar and the job documents on disk" if facts else "the job documents on disk",
    }
    write_document(receipt_path, receipt)
    return receipt_path


def _roster(logs_dir: Path, facts: dict[str, Any]) -> list[tuple[str, str]]:
    """(job id, stage) in declaration order: the sidecar's roster, then any job folder it lacks."""
    roster = [(str(j[0]), str(j[1])) for j in facts.get("roster") or [] if isinstance(j, list) and len(j) == 2]
    known = {job_id for job_id, _ in roster}
    jobs_dir = logs_dir / "jobs"
    on_disk = sorted(p.name for p in jobs_dir.iterdir() if p.is_dir()) if jobs_dir.is_dir() else []
    return roster + [(name, "") for name in on_disk if name not in known]


def _job(logs_dir: Path, run_id: str, pipeline_id: str, job_id: str, stage: str, found_ns: int) -> dict[str, Any]:
    """The job's outcome from its summary; a job without one gets a `canceled` summary and manifest."""
    folder = logs_dir / "jobs" / job_id
    summary = read_mapping(folder / "summary.json")
    if not summary.get("status"):
        summary = {"schema_version": SCHEMA, "run_id": run_id, "pipeline_id": pipeline_id, "job_id": job_id,
                   "stage": stage, "status": "canceled", "exit_code": None, "failure_kind": m.CANCELED,
                   "started_at": None, "finished_at": rfc3339(found_ns), "duration_ms": 0, "resources": {},
                   "message": WHY}
        write_document(folder / "summary.json", summary)
        write_document(folder / "manifest.json", _manifest(folder, run_id, job_id))
    return {"id": job_id, "stage": summary.get("stage") or stage, "status": summary["status"],
            "exit_code": summary.get("exit_code"), "failure_kind": summary.get("failure_kind"),
            "duration_ms": summary.get("duration_ms") or 0, "finished_at": summary.get("finished_at"),
            "allow_failure": bool(summary.get("allow_failure"))}


def _manifest(folder: Path, run_id: str, job_id: str) -> dict[str, Any]:
    """What the job's folder holds: its steps and system sections, as far as they got."""
    base = f"jobs/{job_id}"
    steps = []
    script = folder / "user" / "script"
    for step in sorted(script.iterdir() if script.is_dir() else [], key=lambda p: (len(p.name), p.name)):
        if step.name.isdigit():
            done = read_mapping(step / "summary.json")
            steps.append({"index": int(step.name), "dir": f"{base}/user/script/{step.name}",
                          "status": done.get("status") or "canceled", "exit_code": done.get("exit_code"),
                          "summary_path": f"{base}/user/script/{step.name}/summary.json",
                          "events_path": f"{base}/user/script/{step.name}/events.jsonl"})
    system = folder / "system"
    sections = [{"name": sec.name, "status": read_mapping(sec / "summary.json").get("status") or "canceled",
                 "summary_path": f"{base}/system/{sec.name}/summary.json",
                 "events_path": f"{base}/system/{sec.name}/events.jsonl"}
                for sec in sorted(system.iterdir() if system.is_dir() else []) if sec.is_dir()]
    return {"schema_version": SCHEMA, "run_id": run_id, "job_id": job_id, "status": "canceled", "steps": steps,
            "system_sections": sections, "failing_section": None, "failing_step_events_path": None,
            "artifacts": []}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ns_of(run_id: str) -> int | None:
    tail = run_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None

