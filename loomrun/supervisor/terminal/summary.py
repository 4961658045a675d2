"""The table at the end of a run (spec §11): every job with its stage, provider, status, duration
and failure kind, sorted by start; then the wall time and the critical path. Runs in the supervisor,
imported once a run is over (never on the start-up path).

The critical path is the chain of dependencies (`needs`, or the stages before) that set the wall
time: from the job that finished last, back through the dependency of each that finished last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from loomrun.protocol.messages import JobEnded
from loomrun.supervisor.terminal import WORD_COLORS, WORDS

HEADER = ("job", "stage", "provider", "status", "duration", "failure")


def seconds(e: JobEnded) -> float | None:
    return (e.finished_ns - e.started_ns) / 1e9 if e.started_ns else None


def by_start(ended: Sequence[JobEnded]) -> list[JobEnded]:
    """Jobs that ran, by start time; then the ones that never started, in the order they settled."""
    ran = sorted((e for e in ended if e.started_ns), key=lambda e: e.started_ns or 0)
    return ran + [e for e in ended if not e.started_ns]


def critical_path(spans: Mapping[str, tuple[float, float]], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Jobs (name -> (start, end) of those that ran) on the chain that set the wall time."""
    if not spans:
        return []
    last = max(spans, key=lambda name: spans[name][1])
    chain = [last]
    while True:
        ups = [d for d in deps.get(last, ()) if d in spans]
        if not ups:
            return chain[::-1]
        last = max(ups, key=lambda name: spans[name][1])
        chain.append(last)


def status_word(e: JobEnded) -> str:
    word = WORDS.get(e.status, e.status)
    return f"{word} (allowed)" if e.status == "failed" and e.allow_failure else word


def render(ended: Sequence[JobEnded], deps: Mapping[str, Sequence[str]], wall_s: float,
           warnings: Sequence[str], paint: Callable[[str, str], str]) -> list[str]:
    rows = []
    for e in by_start(ended):
        took = seconds(e)
        rows.append((e.job_id, e.stage, e.provider, status_word(e), "-" if took is None else f"{took:.2f}s",
                     e.failure_kind or ""))
    widths = [max(len(r[i]) for r in (HEADER, *rows)) for i in range(len(HEADER))]

    def row(cells: Sequence[str], color: str | None = None) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            text = cell.rjust(width) if i == 4 else cell.ljust(width)
            if i == 3 and color:
                text = paint(text, color)
            out.append(text)
        return "  ".join(out).rstrip()

    lines = ["", paint(row(HEADER), "bold")]
    for cells in rows:
        lines.append(row(cells, WORD_COLORS.get(cells[3].split(" ")[0])))
    ran = {e.job_id: e for e in ended if e.started_ns}
    chain = critical_path({n: (e.started_ns or 0, e.finished_ns) for n, e in ran.items()}, deps)
    path = " -> ".join(f"{name} ({seconds(ran[name]) or 0:.2f}s)" for name in chain)
    lines.append(f"wall time {wall_s:.2f}s" + (f"; critical path: {path}" if chain else ""))
    if warnings:
        lines.append(f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''}:")
        lines.extend(f"  {w}" for w in warnings)
    return lines
