"""`pipeline/trace.json`: the run in Chrome's trace-event format (spec §11), for Perfetto
(ui.perfetto.dev) and chrome://tracing. Runs in the writer process.

Fed every record as it arrives (`feed`: a dict lookup by type, then at most one small dict per
record), written once, with the pipeline documents. Tracks: thread 0 is the run (its phases);
threads 1..N are worker slots: a job takes the lowest free slot when its worker is attached and
frees it at its end, so there are never more slots than jobs ran at once. On a slot: a slice per
job, its phases inside it, its steps inside `job.execution`. Times are microseconds from the
run's start; `cname` colours a job by status in chrome://tracing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loomrun.protocol import messages as m
from loomrun.writer.events import SCHEMA

PID = 1
COLOR = {"success": "good", "failed": "terrible", "canceled": "bad", "skipped": "grey"}


class Trace:
    __slots__ = ("begun", "events", "origin", "redact", "run_id", "slot", "steps")

    def __init__(self, start: m.RunStarted, redact: Callable[[str], str]) -> None:
        self.origin = start.started_ns
        self.run_id = start.run_id
        self.redact = redact
        self.events: list[dict[str, Any]] = []
        self.slot: dict[str, int] = {}  # job -> its slot (tid), while it runs
        self.begun: dict[tuple[str, str], int] = {}  # (job or "", phase code) -> start ns
        self.steps: dict[tuple[str, int], tuple[int, str]] = {}  # (job, step) -> (start ns, command)

    def _us(self, ns: int) -> float:
        return (ns - self.origin) / 1000

    def _slice(self, name: str, cat: str, tid: int, start_ns: int, end_ns: int, **args: Any) -> dict[str, Any]:
        ev: dict[str, Any] = {"name": name, "cat": cat, "ph": "X", "pid": PID, "tid": tid,
                              "ts": self._us(start_ns), "dur": max(0.0, (end_ns - start_ns) / 1000)}
        if args:
            ev["args"] = args
        self.events.append(ev)
        return ev

    def feed(self, msg: Any) -> None:
        handler = _HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, msg)

    # -- records -------------------------------------------------------------------------------
    def _attach(self, msg: m.AttachWorker) -> None:
        busy = set(self.slot.values())
        self.slot[msg.job_id] = next(n for n in range(1, len(busy) + 2) if n not in busy)

    def _run_phase(self, msg: m.RunPhase) -> None:
        self._phase("", msg.phase_code, msg.ts_ns, msg.status, 0)

    def _job_phase(self, msg: m.PhaseMark) -> None:
        self._phase(msg.job_id, msg.phase_code, msg.ts_ns, msg.status, self.slot.get(msg.job_id, 0))

    def _phase(self, job: str, code: str, ts_ns: int, status: str | None, tid: int) -> None:
        if status is None:
            self.begun[(job, code)] = ts_ns
            return
        start = self.begun.pop((job, code), None)
        if start is not None:
            self._slice(code, "phase", tid, start, ts_ns, status=status)

    def _step_started(self, msg: m.StepStarted) -> None:
        self.steps[(msg.job_id, msg.step)] = (msg.ts_ns, msg.command)

    def _step_finished(self, msg: m.StepFinished) -> None:
        begun = self.steps.pop((msg.job_id, msg.step), None)
        if begun is not None:
            self._slice(f"step {msg.step}", "step", self.slot.get(msg.job_id, 0), begun[0], msg.ts_ns,
                        command=self.redact(begun[1]), exit_code=msg.exit_code)

    def _job_ended(self, msg: m.JobEnded) -> None:
        tid = self.slot.pop(msg.job_id, 0)
        for step in [k for k in self.steps if k[0] == msg.job_id]:  # a step its worker never finished
            start, command = self.steps.pop(step)
            self._slice(f"step {step[1]}", "step", tid, start, msg.finished_ns, command=self.redact(command),
                        status=msg.status)
        for phase in [k for k in self.begun if k[0] == msg.job_id]:
            self._slice(phase[1], "phase", tid, self.begun.pop(phase), msg.finished_ns, status=msg.status)
        if msg.started_ns and not msg.replay:
            ev = self._slice(msg.job_id, "job", tid, msg.started_ns, msg.finished_ns, status=msg.status,
                             stage=msg.stage, provider=msg.provider, failure_kind=msg.failure_kind,
                             message=self.redact(msg.message))
            ev["cname"] = COLOR.get(msg.status, "generic_work")

    # -- the document ----------------------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        tids = sorted({ev["tid"] for ev in self.events} | {0})
        meta: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": PID, "tid": 0,
                                       "args": {"name": f"loom {self.run_id}"}}]
        for tid in tids:
            meta.append({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid,
                         "args": {"name": "run" if tid == 0 else f"slot {tid}"}})
            meta.append({"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid, "args": {"sort_index": tid}})
        # Slices in start order, a parent before its children (longer first at the same start).
        events = sorted(self.events, key=lambda ev: (ev["ts"], -ev["dur"]))
        return {"schema_version": SCHEMA, "displayTimeUnit": "ms", "otherData": {"run_id": self.run_id},
                "traceEvents": meta + events}


_HANDLERS: dict[type, Callable[[Trace, Any], None]] = {
    m.AttachWorker: Trace._attach,
    m.RunPhase: Trace._run_phase,
    m.PhaseMark: Trace._job_phase,
    m.StepStarted: Trace._step_started,
    m.StepFinished: Trace._step_finished,
    m.JobEnded: Trace._job_ended,
}
