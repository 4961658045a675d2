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


# Stands for a newline while a block of output lines is JSON-encoded as one string. Output text
# comes from a UTF-8 decode, which never yields a lone surrogate (nor could the event be encoded with
# one), and with ensure_ascii=False the JSON encoder passes it through unescaped: after encoding,
# every one of them is a line boundary.
_NEWLINE = "\ud800"


def emit_output(file: LineFile, ts_ns: int, job_id: str, step: int, stream: str, text: str,
                continued: bool = False) -> None:
    """Output lines of a step, `text` being one or more lines joined by newlines: one `line` event,
    or one batch event with `lines` (throughput). `continued`: `text` is one leading piece of a long
    line, which goes on in the first line of the next output event of the same stream (which may
    be a piece again).

    A batch is encoded as one string whose newlines became _NEWLINE, then split into the JSON array
    by a replace: the same bytes as `dumps(text.split("\\n"))`, without one str per line (a 1 MiB
    read of short lines made 150,000 of them, and their arenas were mapped and unmapped again for
    every read: 3 M lines cost the writer 400 ms of CPU and 80,000 page faults, 130 ms without)."""
    file.seq += 1
    head = f'{{"ts":"{rfc3339(ts_ns)}","seq":{file.seq},"type":"output","scope":"step",' \
           f'"phase_code":"job.execution","phase_family":"job","job_id":{dumps(job_id)},' \
           f'"step":{step},"stream":"{stream}",'
    if continued:
        body = f'"line":{dumps(text)},"continued":true}}\n'
    elif "\n" not in text:
        body = f'"line":{dumps(text)}}}\n'
    else:  # dumps gives "a<NEWLINE>b": ["a","b"] once each _NEWLINE is ","
        body = '"lines":[' + dumps(text.replace("\n", _NEWLINE)).replace(_NEWLINE, '","') + "]}\n"
    file.write((head + body).encode())
