"""Event-line formatting for every JSONL file. Runs in the writer process."""

from __future__ import annotations

import time
from typing import Any

from loomrun.writer.files import LineFile, dumps

SCHEMA = "loom.runtime.logs.v2"

# The job phase each system section belongs to (spec §5.4 phase codes).
SECTION_PHASE = {
    "provider": "job.provider_prepare",
    "image_build": "job.provider_prepare",
    "services": "job.provider_prepare",
    "secrets": "job.provider_prepare",
    "cache_restore": "job.cache_restore",
    "artifact_restore": "job.artifact_restore",
    "cache_save": "job.cache_save",
    "artifact_extract": "job.cache_save",
    "cleanup": "job.cleanup",
}


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def rfc3339(ns: int) -> str:
    secs, rem = divmod(ns, 1_000_000_000)
    if secs != _second[0]:  # most events of a run share their second with the one before
        _second[:] = [secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))]
    return f"{_second[1]}.{rem // 1_000_000:03d}Z"


def family(phase_code: str | None) -> str | None:
    return phase_code.split(".", 1)[0] if phase_code else None


def emit(file: LineFile, ts_ns: int, type_: str, scope: str, phase_code: str | None, **fields: Any) -> None:
    """Append one event (seq per file, from 1)."""
    file.seq += 1
    event: dict[str, Any] = {"ts": rfc3339(ts_ns), "seq": file.seq, "type": type_, "scope": scope}
    if phase_code:
        event["phase_code"] = phase_code
        event["phase_family"] = family(phase_code)
    event.update(fields)
    file.write((dumps(event) + "\n").encode())


def emit_output(file: LineFile, ts_ns: int, job_id: str, step: int, stream: str, lines: list[str],
                continued: bool = False) -> None:
    """Output lines of a step: one `line` event, or one batch event with `lines` (throughput).
    `continued`: the one line given is a leading piece of a long line, which goes on in the first
    line of the next output event of the same stream (which may be a piece again)."""
    file.seq += 1
    head = f'{{"ts":"{rfc3339(ts_ns)}","seq":{file.seq},"type":"output","scope":"step",' \
           f'"phase_code":"job.execution","phase_family":"job","job_id":{dumps(job_id)},' \
           f'"step":{step},"stream":"{stream}",'
    if continued:
        body = f'"line":{dumps(lines[0])},"continued":true}}\n'
    else:
        body = f'"line":{dumps(lines[0])}}}\n' if len(lines) == 1 else f'"lines":{dumps(lines)}}}\n'
    file.write((head + body).encode())
