"""`loom run --local --cache-diff`: two passes at once, cache off and cache on, then a comparison.

Runs in the `loom` process. Pass 1 (cache off) runs in a forked copy of the supervisor with its
own writer, worker pool, snapshot and run id; pass 2 (cache on) runs here at the same time. Both
record the mechanical result of every job (status, exit code, sha256 + mode of its declared
outputs). Before pass 2's receipt is written, the passes are compared: the cache-hit keys of a
diverging job are quarantined; a job that diverges without a hit is reported nondeterministic.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
from typing import Any

from loomrun.errors import ExitCode
from loomrun.supervisor.run import Run, RunOptions, run_local
from loomrun.supervisor.terminal import Terminal


def _pass_one(opts: RunOptions, out_fd: int) -> None:
    """The child: run with the cache off and send back what the comparison needs."""
    payload: dict[str, Any]
    try:
        term = Terminal(verbose=opts.verbose, quiet=opts.quiet, prefix="[cache off] ", final=False)
        res = run_local(opts._replace(cache_enabled=False, fingerprint_outputs=True), term)
        payload = {
            "run_id": res.run_id, "logs_dir": res.logs_dir, "status": res.status, "receipt": res.receipt_path,
            "error": res.error,
            "jobs": {n: (o.status, o.exit_code, dict(o.outputs), tuple(o.cache_hits))
                     for n, o in res.outcomes.items()},
        }
    except BaseException as exc:  # crosses as data
        payload = {"failed": f"{type(exc).__name__}: {exc}"}
    data = pickle.dumps(payload)
    view = memoryview(data)
    while view:
        view = view[os.write(out_fd, view):]


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except InterruptedError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def run_cache_diff(opts: RunOptions) -> int:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            _pass_one(opts, write_fd)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    child = {"pid": pid}

    def amend(run: Run, exit_code: int, error: str | None) -> tuple[int, str | None]:
        # A signal now (pass 2 is done, pass 1 may not be) goes on to pass 1, which cancels itself.
        forward = {s: signal.signal(s, lambda sig, _f: _forward(child["pid"], sig))
                   for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            raw = _read_all(read_fd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child["pid"], 0)
            child["pid"] = 0
        finally:
            for s, h in forward.items():
                signal.signal(s, h)
        return _compare(run, exit_code, error, raw)

    term = Terminal(verbose=opts.verbose, quiet=opts.quiet, prefix="[cache on] ")
    try:
        result = run_local(opts._replace(cache_enabled=True, fingerprint_outputs=True), term, amend)
    finally:
        os.close(read_fd)
        if child["pid"]:
            _forward(child["pid"], signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child["pid"], 0)
    return result.exit_code


def _forward(pid: int, sig: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _compare(run: Run, exit_code: int, error: str | None, raw: bytes) -> tuple[int, str | None]:
    from loomrun.cache.compare import JobOutcome, cache_diff_failed, compare_passes
    from loomrun.cache.quarantine import Quarantine

    try:
        off: dict[str, Any] = pickle.loads(raw) if raw else {"failed": "the cache-off pass ended without a result"}
    except (pickle.PickleError, EOFError, ValueError) as exc:
        off = {"failed": f"the cache-off pass sent an unreadable result: {exc}"}
    if "failed" in off:
        run.receipt["cache_diff"] = {"error": off["failed"]}
        return ExitCode.FAILED, f"--cache-diff: {off['failed']}"
    outcomes = run.sup.outcomes if run.sup is not None else {}
    on = {n: JobOutcome(o.status, o.exit_code, o.outputs, tuple(o.cache_hits)) for n, o in outcomes.items()}
    off_jobs = {n: JobOutcome(s, c, outs, hits) for n, (s, c, outs, hits) in off["jobs"].items()}
    passes = [
        {"cache": "off", "run_id": off["run_id"], "logs_dir": off["logs_dir"], "status": off["status"],
         "receipt": off["receipt"]},
        {"cache": "on", "run_id": run.run_id, "logs_dir": run.logs_dir,
         "status": "success" if exit_code == 0 else "failure"},
    ]
    order = run.sup.sched.order if run.sup is not None else None
    block = compare_passes(off_jobs, on, run_off=off["run_id"], run_on=run.run_id,
                           quarantine=Quarantine(run.runtime / "cache"), passes=passes, order=order)
    run.receipt["cache_diff"] = block
    for job in block["jobs"]:
        if job["diverged"] and job["cache_hits"]:
            run.term.line(f'cache-diff: job "{job["id"]}" diverged with the cache on; '
                          f'quarantined {", ".join(job["cache_hits"])}')
        elif job["diverged"]:
            run.term.line(f'cache-diff: job "{job["id"]}" is nondeterministic (differs without a cache hit)')
        for diff in job["differences"]:
            run.term.detail(f'cache-diff: {job["id"]}: {diff["path"]}: off {diff["off"]} on {diff["on"]}')
    compared = len(block["jobs"])
    run.term.line(f"cache-diff: {compared} job(s) compared, {len(block['quarantined'])} key(s) quarantined")
    if cache_diff_failed(block):
        if error is None:
            if block["quarantined"]:
                error = f"--cache-diff quarantined {', '.join(block['quarantined'])}"
            else:
                error = off.get("error") or "the cache-off pass failed"
        return ExitCode.FAILED, error
    return exit_code, error
