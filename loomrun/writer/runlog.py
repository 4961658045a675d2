"""The state of one run's logs and every document built from it. Runs in the writer process.

Layout (spec §5.1), all paths below `logs/<run_id>/`:
events.jsonl, pipeline/{summary,manifest}.json, jobs/<id>/{summary,manifest}.json,
jobs/<id>/user/script/<NN>/{summary.json,events.jsonl}, jobs/<id>/system/<section>/{...},
jobs/<id>/artifacts/<path>. Paths inside documents are relative to the logs dir.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from loomrun import __version__
from loomrun.durable import syncfs
from loomrun.protocol import messages as m
from loomrun.writer.events import SCHEMA, SECTION_PHASE, emit, emit_output, rfc3339
from loomrun.writer.files import Documents, Folders, LineFile, recover_temps, spread_children, write_document
from loomrun.writer.redact import Redactor
from loomrun.writer.tail import last_lines


def run_kind(run_id: str) -> str:
    """The receipt's `kind`: `loom-run-remote` for a run on a Ray cluster (spec §12), else local."""
    return "loom-run-remote" if run_id.startswith("loom-run-remote-") else "loom-run-local"


def step_dir(index: int) -> str:
    return f"user/script/{index:02d}" if index < 100 else f"user/script/{index:03d}"


# Plain classes with __slots__, not dataclasses: the supervisor imports this module at every start of
# `loom` (the writer is forked from it), and defining a dataclass cost ~0.7 ms there.
class StepLog:
    __slots__ = ("command", "duration_ms", "events", "exit_code", "finished_ns", "index", "last_output_ns",
                 "message", "open_streams", "output_lines", "started_ns", "status", "written")

    def __init__(self, index: int, command: str, started_ns: int, events: LineFile) -> None:
        self.index = index
        self.command = command
        self.started_ns = started_ns
        self.events = events
        self.open_streams = 2
        self.output_lines = 0
        self.last_output_ns = 0
        self.exit_code: int | None = None
        self.duration_ms: int | None = None
        self.finished_ns: int | None = None
        self.written = False
        self.status = "running"
        self.message = ""


class SectionLog:
    __slots__ = ("details", "error_code", "events", "finished_ns", "message", "name", "started_ns", "status")

    def __init__(self, name: str, started_ns: int, events: LineFile) -> None:
        self.name = name
        self.started_ns = started_ns
        self.events = events
        self.status = "running"
        self.finished_ns: int | None = None
        self.error_code = ""
        self.message = ""
        self.details: dict[str, Any] = {}


class JobLog:
    __slots__ = ("artifacts", "ended", "job_id", "node", "sections", "stage", "steps")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.stage = ""
        self.steps: dict[int, StepLog] = {}
        self.sections: dict[str, SectionLog] = {}
        self.artifacts: list[dict[str, Any]] = []
        self.ended: m.JobEnded | None = None
        self.node: dict[str, Any] | None = None  # a remote job's cluster node (spec §12)


class RunLog:
    def __init__(self, start: m.RunStarted, redactor: Redactor) -> None:
        self.start = start
        self.runtime = Path(start.repo_root) / ".loom" / ".runtime"
        self.logs_dir = self.runtime / "logs" / start.run_id
        self.receipts_dir = self.runtime / "receipts"
        self.redactor = redactor
        self.runtime.mkdir(parents=True, exist_ok=True)
        gitignore = self.runtime / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text("*\n")
        if self.logs_dir.is_dir():  # a writer takes over from one that died
            recover_temps(self.logs_dir)
        else:  # each run's logs are a tree of their own, placed by the filesystem as one
            self.logs_dir.parent.mkdir(exist_ok=True)
            spread_children(self.logs_dir.parent)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.receipts_dir.mkdir(parents=True, exist_ok=True)
        # Paths below the logs dir are built as strings (pathlib cost the writer ~15% of its time).
        self.logs = str(self.logs_dir)
        self.folders = Folders(self.logs)
        self.events = LineFile(f"{self.logs}/events.jsonl", self.folders)
        self.docs = Documents(self.folders)
        self.roster: list[tuple[str, str]] = []
        self.jobs: dict[str, JobLog] = {}
        self.finish_order: list[str] = []
        from loomrun.writer.trace import Trace  # here, in the writer: not on the supervisor's start-up path

        self.trace = Trace(start, self.redact)  # fed by the writer's loop as records arrive

    # -- helpers ---------------------------------------------------------------------------
    def job(self, job_id: str) -> JobLog:
        log = self.jobs.get(job_id)
        if log is None:
            log = self.jobs[job_id] = JobLog(job_id)
        return log

    def redact(self, text: str) -> str:
        return self.redactor.text(text) if self.redactor.active else text

    def write_doc(self, path: str | Path, doc: dict[str, Any]) -> None:
        """Every document of the run, redacted whole (section details, messages, resources)."""
        self.docs.write(path, self.redactor.doc(doc))

    def job_dir(self, job_id: str) -> Path:
        return self.logs_dir / "jobs" / job_id

    def job_path(self, job_id: str, rel: str) -> str:
        """`jobs/<id>/<rel>` below the logs dir, as a string."""
        return f"{self.logs}/jobs/{job_id}/{rel}"

    # -- run level -------------------------------------------------------------------------
    def run_phase(self, msg: m.RunPhase) -> None:
        scope = "pipeline" if msg.phase_code.startswith("pipeline.") else "run"
        kind = "phase_started" if msg.status is None else "phase_finished"
        extra = {} if msg.status is None else {"status": msg.status}
        emit(self.events, msg.ts_ns, kind, scope, msg.phase_code, run_id=self.start.run_id, **extra)

    def set_roster(self, msg: m.JobRoster) -> None:
        self.roster = list(msg.jobs)
        for job_id, stage in self.roster:
            self.job(job_id).stage = stage

    # -- job phases and sections -------------------------------------------------------------
    def phase(self, msg: m.PhaseMark) -> None:
        kind = "phase_started" if msg.status is None else "phase_finished"
        extra = {} if msg.status is None else {"status": msg.status}
        emit(self.events, msg.ts_ns, kind, "job", msg.phase_code, job_id=msg.job_id, **extra)

    def section_began(self, msg: m.SectionBegan) -> None:
        path = self.job_path(msg.job_id, f"system/{msg.name}/events.jsonl")
        sec = SectionLog(msg.name, msg.ts_ns, LineFile(path, self.folders))
        self.job(msg.job_id).sections[msg.name] = sec
        emit(sec.events, msg.ts_ns, "phase_started", "section", SECTION_PHASE.get(msg.name),
             job_id=msg.job_id, section=msg.name)

    def section_lines(self, msg: m.SectionLines) -> None:
        sec = self.job(msg.job_id).sections.get(msg.name)
        if sec is None:
            self.section_began(m.SectionBegan(msg.job_id, msg.name, msg.ts_ns))
            sec = self.job(msg.job_id).sections[msg.name]
        for line in msg.lines:
            emit(sec.events, msg.ts_ns, "output", "section", SECTION_PHASE.get(msg.name),
                 job_id=msg.job_id, section=msg.name, stream=msg.stream, line=self.redact(line))

    def section_ended(self, msg: m.SectionEnded) -> None:
        job = self.job(msg.job_id)
        sec = job.sections.get(msg.name)
        if sec is None:
            self.section_began(m.SectionBegan(msg.job_id, msg.name, msg.ts_ns))
            sec = job.sections[msg.name]
        phase = SECTION_PHASE.get(msg.name)
        if msg.error_code or (msg.message and msg.status == "failed"):
            emit(sec.events, msg.ts_ns, "error", "section", phase, job_id=msg.job_id, section=msg.name,
                 code=msg.error_code or "LOOM_SECTION_FAILED", message=self.redact(msg.message))
        emit(sec.events, msg.ts_ns, "phase_finished", "section", phase, job_id=msg.job_id,
             section=msg.name, status=msg.status)
        sec.status, sec.finished_ns = msg.status, msg.ts_ns
        sec.error_code, sec.message, sec.details = msg.error_code, self.redact(msg.message), dict(msg.details)
        self._write_section(msg.job_id, sec)

    def _write_section(self, job_id: str, sec: SectionLog) -> None:
        end = sec.finished_ns or sec.started_ns
        doc: dict[str, Any] = {
            "schema_version": SCHEMA, "run_id": self.start.run_id, "job_id": job_id, "section": sec.name,
            "status": sec.status, "started_at": rfc3339(sec.started_ns), "finished_at": rfc3339(end),
            "duration_ms": (end - sec.started_ns) // 1_000_000,
        }
        if sec.error_code:
            doc["error_code"] = sec.error_code
        if sec.message:
            doc["message"] = sec.message
        doc.update(sec.details)
        self.write_doc(self.job_path(job_id, f"system/{sec.name}/summary.json"), doc)

    # -- steps -----------------------------------------------------------------------------
    def step_started(self, msg: m.StepStarted) -> StepLog:
        path = self.job_path(msg.job_id, f"{step_dir(msg.step)}/events.jsonl")
        step = StepLog(msg.step, self.redact(msg.command), msg.ts_ns, LineFile(path, self.folders))
        self.job(msg.job_id).steps[msg.step] = step
        emit(step.events, msg.ts_ns, "phase_started", "step", "job.execution", job_id=msg.job_id,
             step=msg.step, command=step.command)
        return step

    def step_output(self, job_id: str, step: StepLog, stream: str, text: str, ts_ns: int) -> None:
        """Whole lines of output: `text` is one or more lines joined by newlines."""
        step.output_lines += text.count("\n") + 1
        emit_output(step.events, _output_ts(step, ts_ns), job_id, step.index, stream, text)

    def step_piece(self, job_id: str, step: StepLog, stream: str, piece: str, ts_ns: int) -> None:
        """A leading piece of a line too long to hold (see process.LINE_CHUNK): one event marked
        `continued`; the line is counted once, when its last piece comes as a whole line."""
        emit_output(step.events, _output_ts(step, ts_ns), job_id, step.index, stream, piece, continued=True)

    def step_finished(self, msg: m.StepFinished) -> None:
        step = self.job(msg.job_id).steps.get(msg.step)
        if step is None:
            return
        step.exit_code, step.duration_ms, step.finished_ns = msg.exit_code, msg.duration_ms, msg.ts_ns
        step.status = "success" if msg.exit_code == 0 else "failed"
        self.maybe_write_step(msg.job_id, step)

    def stream_closed(self, job_id: str, step: StepLog) -> None:
        step.open_streams -= 1
        self.maybe_write_step(job_id, step)

    def maybe_write_step(self, job_id: str, step: StepLog, force: bool = False) -> None:
        """A step's summary is written once its exit is known and both output streams hit EOF."""
        if step.written or not (force or (step.exit_code is not None and step.open_streams <= 0)):
            return
        step.written = True
        end = max(step.finished_ns or step.started_ns, step.last_output_ns)  # see _output_ts
        if step.exit_code is not None:
            emit(step.events, end, "step_finished", "step", "job.execution", job_id=job_id,
                 step=step.index, exit_code=step.exit_code, status=step.status)
            emit(self.events, end, "step_finished", "step", "job.execution", job_id=job_id,
                 step=step.index, exit_code=step.exit_code)
        else:
            emit(step.events, end, "error", "step", "job.execution", job_id=job_id, step=step.index,
                 code="LOOM_STEP_INTERRUPTED", message=step.message)
        doc = {
            "schema_version": SCHEMA, "run_id": self.start.run_id, "job_id": job_id, "index": step.index,
            "command": step.command, "status": step.status, "exit_code": step.exit_code,
            "started_at": rfc3339(step.started_ns), "finished_at": rfc3339(end),
            "duration_ms": step.duration_ms if step.duration_ms is not None
            else (end - step.started_ns) // 1_000_000,
            "output_lines": step.output_lines,
        }
        if step.message:
            doc["message"] = step.message
        self.write_doc(self.job_path(job_id, f"{step_dir(step.index)}/summary.json"), doc)
        step.events.close()

    def job_placed(self, msg: m.JobPlaced) -> None:
        self.job(msg.job_id).node = {"id": msg.node_id, "address": msg.address, "labels": dict(msg.labels)}

    # -- artifacts ---------------------------------------------------------------------------
    def adopt_artifacts(self, msg: m.ArtifactsStaged) -> None:
        """Move staged files under jobs/<id>/artifacts/ (rename: same filesystem) and hash them."""
        dest_root = self.job_dir(msg.job_id) / "artifacts"
        staging = Path(msg.staging_dir)
        job = self.job(msg.job_id)
        for rel in msg.files:
            src, dest = staging / rel, dest_root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            job.artifacts.append(_artifact_entry(rel, dest))
        shutil.rmtree(staging, ignore_errors=True)

    # -- job end -----------------------------------------------------------------------------
    def job_ended(self, msg: m.JobEnded) -> None:
        job = self.job(msg.job_id)
        job.ended = msg
        if msg.replay and (self.job_dir(msg.job_id) / "manifest.json").exists():
            if msg.status == "failed":
                self.finish_order.append(msg.job_id)
            return  # the writer before us wrote this job's documents; they stand
        job.stage = msg.stage or job.stage
        for step in job.steps.values():
            if not step.written:
                if step.exit_code is None:
                    step.status = "failed" if msg.status == "failed" else "canceled"
                    step.message = msg.message
                    step.finished_ns = msg.finished_ns
                self.maybe_write_step(msg.job_id, step, force=True)
        if job.sections and "cleanup" not in job.sections:  # the worker died before its cleanup
            self.section_began(m.SectionBegan(msg.job_id, "cleanup", msg.finished_ns))
            self.section_lines(m.SectionLines(msg.job_id, "cleanup", (f"supervisor sweep: {msg.sweep}",),
                                              "stdout", msg.finished_ns))
            self.section_ended(m.SectionEnded(msg.job_id, "cleanup", "success", msg.finished_ns))
        for sec in job.sections.values():
            if sec.status == "running":
                sec.status, sec.finished_ns = "failed", msg.finished_ns
                sec.message = sec.message or msg.message
                emit(sec.events, msg.finished_ns, "phase_finished", "section", SECTION_PHASE.get(sec.name),
                     job_id=msg.job_id, section=sec.name, status="failed")
                self._write_section(msg.job_id, sec)
            sec.events.close()
        if msg.status == "failed":
            self.finish_order.append(msg.job_id)
        self.write_doc(self.job_path(msg.job_id, "summary.json"), self._job_summary(msg))
        self.write_doc(self.job_path(msg.job_id, "manifest.json"), self._job_manifest(job, msg))

    def failing_tail(self, msg: m.JobEnded) -> tuple[str, ...]:
        """A failed job's last output lines where it failed (a step, else a system section), as
        its events file has them (redacted), made safe for a terminal."""
        job = self.jobs.get(msg.job_id)
        if job is None or msg.status != "failed":
            return ()
        section, step = _failing_place(job, msg)
        if step is not None:
            return tuple(last_lines(job.steps[step].events.path))
        if section is not None and section in job.sections:
            return tuple(last_lines(job.sections[section].events.path))
        return ()

    def _job_summary(self, msg: m.JobEnded) -> dict[str, Any]:
        started = msg.started_ns
        doc: dict[str, Any] = {
            "schema_version": SCHEMA, "run_id": self.start.run_id, "pipeline_id": self.start.pipeline_id,
            "job_id": msg.job_id, "stage": msg.stage, "status": msg.status, "exit_code": msg.exit_code,
            "failure_kind": msg.failure_kind, "provider": msg.provider, "image": msg.image,
            "allow_failure": msg.allow_failure,
            "started_at": rfc3339(started) if started else None, "finished_at": rfc3339(msg.finished_ns),
            "duration_ms": (msg.finished_ns - started) // 1_000_000 if started else 0,
            "resources": msg.resources,
        }
        if msg.message:
            doc["message"] = self.redact(msg.message)
        return doc

    def _job_manifest(self, job: JobLog, msg: m.JobEnded) -> dict[str, Any]:
        base = f"jobs/{job.job_id}"  # paths in documents are relative to the logs dir
        steps = [
            {"index": s.index, "dir": f"{base}/{step_dir(s.index)}", "status": s.status,
             "exit_code": s.exit_code, "summary_path": f"{base}/{step_dir(s.index)}/summary.json",
             "events_path": f"{base}/{step_dir(s.index)}/events.jsonl"}
            for s in sorted(job.steps.values(), key=lambda s: s.index)
        ]
        sections = [
            {"name": s.name, "status": s.status,
             "summary_path": f"{base}/system/{s.name}/summary.json",
             "events_path": f"{base}/system/{s.name}/events.jsonl"}
            for s in job.sections.values()
        ]
        failing_section, failing_step = _failing_place(job, msg)
        doc: dict[str, Any] = {
            "schema_version": SCHEMA, "run_id": self.start.run_id, "job_id": job.job_id,
            "status": msg.status, "steps": steps, "system_sections": sections,
            "failing_section": failing_section,
            "failing_step_events_path": (f"{base}/{step_dir(failing_step)}/events.jsonl"
                                         if failing_step is not None else None),
            "artifacts": job.artifacts,
        }
        failed_in = job.sections.get(failing_section or "")
        if failed_in is not None and failed_in.error_code:  # e.g. SECRETS_REF_NOT_FOUND (spec §7.2)
            doc["error_code"] = failed_in.error_code
        if job.node is not None:
            doc["node"] = job.node
        return doc

    # -- run end -----------------------------------------------------------------------------
    def receipt_path(self) -> Path:
        return self.receipts_dir / f"{self.start.run_id}.json"

    def run_ended(self, msg: m.RunEnded) -> Path:
        start = self.start
        duration_ms = (msg.finished_ns - start.started_ns) // 1_000_000
        jobs_out = []
        counts = {"total": 0, "success": 0, "failed": 0, "skipped": 0, "canceled": 0}
        manifest_jobs = []
        for job_id, stage in self.roster:
            job = self.jobs.get(job_id)
            ended = job.ended if job else None
            status = ended.status if ended else "canceled"
            counts["total"] += 1
            counts[status] = counts.get(status, 0) + 1
            jobs_out.append({
                "id": job_id, "status": status, "exit_code": ended.exit_code if ended else None,
                "failure_kind": ended.failure_kind if ended else m.CANCELED,
                "duration_ms": ((ended.finished_ns - ended.started_ns) // 1_000_000
                                if ended and ended.started_ns else 0),
            })
            manifest_jobs.append({
                "id": job_id, "stage": stage, "status": status,
                "summary_path": f"jobs/{job_id}/summary.json", "manifest_path": f"jobs/{job_id}/manifest.json",
            })
        failing = next((j for j in self.finish_order if not _allowed(self.jobs[j].ended)), None)
        error = self.redact(msg.error) if msg.error else None
        if msg.write_pipeline:
            summary: dict[str, Any] = {
                "schema_version": SCHEMA, "run_id": start.run_id, "pipeline_id": start.pipeline_id,
                "status": msg.status, "exit_code": msg.exit_code, "started_at": rfc3339(start.started_ns),
                "finished_at": rfc3339(msg.finished_ns), "duration_ms": duration_ms, "jobs": counts,
            }
            if error:
                summary["error"] = error
            manifest: dict[str, Any] = {"schema_version": SCHEMA, "run_id": start.run_id, "jobs": manifest_jobs}
            if msg.status == "failure":
                manifest["failing_job_id"] = failing
                manifest["failing_job_manifest_path"] = f"jobs/{failing}/manifest.json" if failing else None
            self.write_doc(self.logs_dir / "pipeline" / "summary.json", summary)
            self.write_doc(self.logs_dir / "pipeline" / "manifest.json", manifest)
            self.write_doc(self.logs_dir / "pipeline" / "trace.json", self.trace.document())
        self.events.close()
        self.docs.flush()
        syncfs(self.logs_dir)  # every log line and document is durable before the receipt, written last
        receipt: dict[str, Any] = {
            "schema_version": "v1", "kind": run_kind(start.run_id), "run_id": start.run_id,
            "pipeline_id": start.pipeline_id, "command": list(start.command), "loom_version": __version__,
            "repo_root": start.repo_root, "workflow_path": start.workflow_path,
            "started_at": rfc3339(start.started_ns), "finished_at": rfc3339(msg.finished_ns),
            "duration_ms": duration_ms, "status": msg.status, "exit_code": msg.exit_code,
        }
        if error:
            receipt["error"] = error
        receipt.update({
            "logs_dir": str(self.logs_dir), "events_jsonl_path": str(self.logs_dir / "events.jsonl"),
            "pipeline_summary_path": str(self.logs_dir / "pipeline" / "summary.json"),
            "pipeline_manifest_path": str(self.logs_dir / "pipeline" / "manifest.json"),
        })
        receipt.update(msg.receipt)
        for key, value in msg.receipt.items():
            if isinstance(value, m.JSONText):
                receipt[key] = json.loads(value)
        receipt["jobs"] = jobs_out
        path = self.receipt_path()
        write_document(path, self.redactor.doc(receipt))
        return path


def _output_ts(step: StepLog, read_ns: int) -> int:
    """The time of output read at `read_ns` (spec §11: never after its step's `step_finished`).
    Read after the step's exit was measured, it was printed by then: it gets the exit's time (or
    the time of the output before it, so a file's times never go back). Read before the exit is
    known, it keeps its read time, and the step's end is then the later of the two."""
    end = step.finished_ns
    if end is not None and read_ns > end:
        read_ns = end if end > step.last_output_ns else step.last_output_ns
    step.last_output_ns = read_ns
    return read_ns


def _allowed(ended: m.JobEnded | None) -> bool:
    return ended is not None and ended.allow_failure


def _failing_place(job: JobLog, msg: m.JobEnded) -> tuple[str | None, int | None]:
    if msg.status in ("success", "skipped"):
        return None, None
    for step in sorted(job.steps.values(), key=lambda s: s.index):
        if step.status in ("failed", "canceled"):
            return "user", step.index
    failed = [s for s in job.sections.values() if s.status == "failed"]
    if failed:  # the innermost (last begun) failed section names the cause: image_build over provider
        causes = [s for s in failed if s.name != "cleanup"] or failed
        return max(causes, key=lambda s: s.started_ns).name, None
    if msg.crashed_step is not None and msg.crashed_step in job.steps:
        return "user", msg.crashed_step
    if job.sections:
        return list(job.sections)[-1], None
    return None, None


def _artifact_entry(rel: str, path: Path) -> dict[str, Any]:
    import hashlib  # only runs with artifacts pay for it

    if path.is_symlink():
        target = os.readlink(path)
        return {"path": rel, "size": 0, "sha256": hashlib.sha256(target.encode()).hexdigest(), "symlink": target}
    if path.is_dir():  # an empty folder, listed so that it travels (ARCHITECTURE.md, "Artifacts")
        return {"path": rel, "size": 0, "sha256": None, "dir": True}
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": rel, "size": path.stat().st_size, "sha256": digest.hexdigest()}


def mark_abandoned(runtime: Path, run_id: str, facts: dict[str, Any] | None = None) -> Path | None:
    """Mark a dead run's documents failure/abandoned, filling what is known (`writer/abandon.py`)."""
    from loomrun.writer import abandon  # only when a run was abandoned

    return abandon.mark_abandoned(runtime, run_id, facts)
