"""`loom logs [RUN_ID] [--job NAME] [--step N] [--follow]` (spec §11). Runs in the `loom` process.

Walks the diagnostics ladder: receipt -> pipeline/manifest.json (failing_job_manifest_path) ->
jobs/<id>/manifest.json (steps, failing_section, failing_step_events_path) -> each step's events.
Output lines go to stdout (data); the one-line headers (`--- step 2 failed (exit code 3): make`)
go to stderr. Without --job: the failing job's whole output, step by step, its failing step
marked. `--follow` tails a run still going (its events files, as the writer appends them) until
its receipt exists. Only reads: a run whose supervisor died is marked abandoned by a one-shot
writer first, as every command does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from loomrun.errors import LoomError
from loomrun.repo import discover_repo_root, runtime_dir

FOLLOW_POLL_S = 0.2
MARK = "  <- the job failed here"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise LoomError(f"missing {path}") from exc
    except (OSError, ValueError) as exc:
        raise LoomError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc


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


def _run_ns(path: Path) -> int:
    try:
        return int(path.name.split(".")[0].rsplit("-", 1)[-1])
    except ValueError:
        return 0


def find_receipt(runtime: Path, run_id: str | None) -> Path:
    receipts = runtime / "receipts"
    if run_id is not None:
        path = receipts / f"{run_id}.json"
        if not path.exists():
            raise LoomError(f"no receipt for run {run_id} in {receipts}")
        return path
    runs = sorted(receipts.glob("loom-run-*.json"), key=_run_ns)
    if not runs:
        raise LoomError(f"no runs recorded in {receipts}")
    return runs[-1]


def event_text(ev: dict[str, Any]) -> list[str]:
    """The lines a person reads for one event: output lines, and an error as `[CODE] message`
    (the code once, also when the message already starts with it)."""
    kind = ev.get("type")
    if kind == "output":
        return list(ev["lines"]) if "lines" in ev else [ev.get("line", "")]
    if kind == "error":
        code, message = str(ev.get("code") or ""), str(ev.get("message") or "")
        if code and message.startswith(code):
            message = message[len(code):].lstrip(":").lstrip()
        return [f"[{code}] {message}" if code else message]
    return []


class LineJoiner:
    """The lines a person reads from one events file, event by event: a line the writer cut into
    pieces (output events marked `"continued": true`, ARCHITECTURE.md step 7) is joined again with
    the first line of the next output event of the same stream."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: dict[str, list[str]] = {}  # stream -> the leading pieces of a line still going on

    def feed(self, ev: dict[str, Any]) -> list[str]:
        if ev.get("type") != "output":
            return event_text(ev)
        lines = event_text(ev)
        stream = str(ev.get("stream", ""))
        held = self.held.pop(stream, None)
        if held is not None:
            if ev.get("continued") and len(lines) == 1:  # one more piece of the same line
                held.append(lines[0])
                self.held[stream] = held
                return []
            lines[0:1] = ["".join([*held, *lines[:1]])]
        if ev.get("continued") and lines:
            self.held[stream] = [lines.pop()]
        return lines

    def rest(self) -> list[str]:
        """What is still held: a step killed in the middle of a long line."""
        out = ["".join(held) for held in self.held.values()]
        self.held.clear()
        return out


def event_lines(path: Path) -> list[str]:
    """The lines of one events file, in order, long lines whole again."""
    out: list[str] = []
    joiner = LineJoiner()
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            try:
                out.extend(joiner.feed(json.loads(raw)))
            except (ValueError, KeyError, TypeError):
                continue
    out.extend(joiner.rest())
    return out


def _emit(lines: list[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def _say(text: str) -> None:
    sys.stdout.flush()  # a header comes after the lines before it, also when both go to one terminal
    print(text, file=sys.stderr, flush=True)


class Step(NamedTuple):
    number: int  # 1-based
    status: str
    exit_code: int | None
    command: str
    events: Path


def _first_line(command: str) -> str:
    lines = command.strip().splitlines() or [""]
    return lines[0] + (" ..." if len(lines) > 1 else "")


def header(step: Step, failing: bool) -> str:
    word = {"success": "passed"}.get(step.status, step.status)
    code = f" (exit code {step.exit_code})" if step.exit_code not in (0, None) else ""
    return f"--- step {step.number} {word}{code}: {_first_line(step.command)}{MARK if failing else ''}"


def job_steps(logs_dir: Path, manifest: dict[str, Any]) -> list[Step]:
    steps = []
    for entry in manifest.get("steps", []):
        try:
            command = str(_read(logs_dir / entry["summary_path"]).get("command", ""))
        except LoomError:
            command = ""
        steps.append(Step(entry["index"], entry.get("status", ""), entry.get("exit_code"), command,
                          logs_dir / entry["events_path"]))
    return steps


def print_job(logs_dir: Path, manifest: dict[str, Any], only_step: int | None) -> None:
    """Every step (or step `only_step`), each under its header; the failing place marked."""
    steps = job_steps(logs_dir, manifest)
    failing_events = manifest.get("failing_step_events_path")
    if only_step is not None:
        steps = [s for s in steps if s.number == only_step]
        if not steps:
            ran = len(manifest.get("steps", []))
            raise LoomError(f'job "{manifest.get("job_id")}" has no step {only_step} (it ran {ran})')
    for step in steps:
        failing = failing_events is not None and logs_dir / failing_events == step.events
        _say(header(step, failing))
        _emit(event_lines(step.events))
    section = manifest.get("failing_section")
    if only_step is None and section not in (None, "user"):
        sec = next((s for s in manifest.get("system_sections", []) if s["name"] == section), None)
        _say(f"--- section {section} failed{MARK}")
        if sec is not None:
            _emit(event_lines(logs_dir / sec["events_path"]))


def main(run_id: str | None, job: str | None, step: int | None = None, follow: bool = False) -> int:
    runtime = find_runtime()
    from loomrun.supervisor.abandoned import reap_with_oneshot_writer

    reap_with_oneshot_writer(runtime)  # a dead run shows as abandoned, not as missing
    if follow:
        return Follow(runtime, run_id, job, step).run()
    receipt = _read(find_receipt(runtime, run_id))
    logs_dir = Path(receipt["logs_dir"])
    pipeline = _read(Path(receipt["pipeline_manifest_path"]))
    if job is not None:
        entry = next((j for j in pipeline.get("jobs", []) if j["id"] == job), None)
        if entry is None:
            raise LoomError(f'run {receipt["run_id"]} has no job "{job}"')
        manifest = _read(logs_dir / entry["manifest_path"])
        if not manifest.get("steps") and not manifest.get("failing_section"):  # never ran: say why
            summary = _read(logs_dir / entry["summary_path"])
            why = summary.get("message")
            _say(f'job "{job}" {summary.get("status")}{f" ({why})" if why else ""}; it ran no step')
            return 0
        print_job(logs_dir, manifest, step)
        return 0
    failing = pipeline.get("failing_job_manifest_path")
    if not failing:
        _say(f'run {receipt["run_id"]}: {receipt.get("status")}'
             f'{": " + receipt["error"] if receipt.get("error") else ""}')
        return 0
    manifest = _read(logs_dir / failing)
    _say(f'run {receipt["run_id"]}: job "{manifest.get("job_id")}" failed in {_place(logs_dir, manifest)}')
    print_job(logs_dir, manifest, step)
    return 0


def _place(logs_dir: Path, manifest: dict[str, Any]) -> str:
    events = manifest.get("failing_step_events_path")
    if events:
        step: dict[str, Any] = next((s for s in manifest.get("steps", []) if s["events_path"] == events), {})
        return f'step {step.get("index")} (exit code {step.get("exit_code")})'
    return f'section {manifest.get("failing_section")}'


# -- --follow -----------------------------------------------------------------------------------------
class Tail:
    """New whole lines of one events file since the last look (and the joiner of its long lines)."""

    __slots__ = ("joiner", "offset", "partial", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.joiner = LineJoiner()

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        out = []
        for raw in data[:cut].splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return out


class Follow:
    def __init__(self, runtime: Path, run_id: str | None, job: str | None, step: int | None) -> None:
        logs = runtime / "logs"
        if run_id is None:
            runs = sorted((p for p in logs.glob("loom-run-*") if p.is_dir()), key=_run_ns)
            if not runs:
                raise LoomError(f"no runs recorded in {logs}")
            run_id = runs[-1].name
        self.run_dir = logs / run_id
        if not self.run_dir.is_dir():
            raise LoomError(f"no run {run_id} in {logs}")
        self.run_id = run_id
        self.runtime = runtime
        self.receipt = runtime / "receipts" / f"{run_id}.json"
        self.pattern = f"jobs/{job or '*'}/user/script/{f'{step:02d}' if step else '*'}/events.jsonl"
        self.prefix = job is None  # lines of several jobs: each carries its job's name
        self.tails: dict[Path, Tail] = {}

    def run(self) -> int:
        from loomrun.supervisor import locks

        _say(f"following run {self.run_id}" + ("" if self.receipt.exists() else " (^C to stop)"))
        reaped = False
        while True:
            over = self.receipt.exists()  # before the last look: it sees everything written by then
            self.look()
            if over:
                break
            if not locks.held(self.runtime / "runs" / f"{self.run_id}.lock"):
                if reaped:
                    raise LoomError(f"run {self.run_id} is not running and has no receipt")
                from loomrun.supervisor.abandoned import reap_with_oneshot_writer

                reaped = True  # its supervisor is gone: marked abandoned, the receipt is written now
                reap_with_oneshot_writer(self.runtime)
                continue
            time.sleep(FOLLOW_POLL_S)
        receipt = _read(self.receipt)
        _say(f'run {self.run_id}: {receipt.get("status")}{": " + receipt["error"] if receipt.get("error") else ""}')
        return 0

    def look(self) -> None:
        """Everything new in every step's events, in time order across jobs."""
        new: list[tuple[str, str, dict[str, Any], LineJoiner]] = []
        for path in sorted(self.run_dir.glob(self.pattern)):
            tail = self.tails.get(path)
            if tail is None:
                tail = self.tails[path] = Tail(path)
            new.extend((str(ev.get("ts", "")), path.parts[-5], ev, tail.joiner) for ev in tail.read())
        new.sort(key=lambda item: item[0])  # stable: one file's events keep their order
        for _, job, ev, joiner in new:
            prefix = f"[{job}] " if self.prefix else ""
            if ev.get("type") == "phase_started" and "command" in ev:
                _say(f'{prefix}--- step {ev.get("step")}: {_first_line(str(ev["command"]))}')
            else:
                _emit([prefix + line for line in joiner.feed(ev)])
