"""`loom run --local --cache-diff`: two passes at once, cache off and cache on, then a comparison.

Runs in the `loom` process. Pass 1 (cache off) runs in a forked copy of the supervisor with its
own writer, worker pool, snapshot and run id; pass 2 (cache on) runs here at the same time. Both
record the mechanical result of every job (status, exit code, sha256 + mode of its declared
outputs). Before pass 2's receipt is written, the passes are compared: the cache-hit keys of a
diverging job are quarantined; a job that diverges without a hit is reported nondeterministic.

Interrupts: a SIGINT/SIGTERM to either pass reaches the other (`_Relay`), so both stop; an
interrupted pass compares nothing and quarantines nothing, and the exit code is the signal's. Pass 1
leads its own process group (a terminal's ^C reaches `loom` once, which relays it once) and gets
SIGTERM from the kernel if `loom` dies (PR_SET_PDEATHSIG): it never runs on as an orphan.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import signal
import struct
from typing import Any

from loomrun.errors import ExitCode
from loomrun.proctree import die_with_parent
from loomrun.supervisor.run import Run, RunOptions, run_local
from loomrun.supervisor.terminal import Terminal

INTERRUPTED = (ExitCode.SIGINT, ExitCode.SIGTERM)


class _Relay:
    """Each SIGINT/SIGTERM one pass receives goes to the other once, never back: a shared page
    counts, per pass, the copies it sent and the copies of the other's it recognised. A signal
    while the other pass has sent more copies than this one took is that copy (the first and second
    signal still mean cancel and skip the grace in both passes)."""

    SENT, TOOK = 0, 1

    def __init__(self) -> None:
        self.page = mmap.mmap(-1, 16)  # MAP_SHARED | MAP_ANONYMOUS: one page for both processes
        self.me = 0  # 0: pass 2 (this process), 1: pass 1 (the forked child), after `become_child`
        self.peer = 0

    def become_child(self, parent: int) -> None:
        self.me, self.peer = 1, parent

    def _get(self, who: int, what: int) -> int:
        return int(struct.unpack_from("I", self.page, 4 * (2 * who + what))[0])

    def _add(self, what: int) -> None:
        struct.pack_into("I", self.page, 4 * (2 * self.me + what), self._get(self.me, what) + 1)

    def __call__(self, signum: int) -> None:
        if self._get(1 - self.me, self.SENT) > self._get(self.me, self.TOOK):
            self._add(self.TOOK)  # the other pass relayed it: it has it already
            return
        if self.peer:
            self._add(self.SENT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.peer, signum)


def _pass_one(opts: RunOptions, out_fd: int, relay: _Relay) -> None:
    """The child: run with the cache off and send back what the comparison needs."""
    payload: dict[str, Any]
    try:
        term = Terminal(verbose=opts.verbose, quiet=opts.quiet, prefix="[cache off] ", final=False)
        res = run_local(opts._replace(cache_enabled=False, fingerprint_outputs=True), term, relay=relay)
        payload = {
            "run_id": res.run_id, "logs_dir": res.logs_dir, "status": res.status, "receipt": res.receipt_path,
            "error": res.error, "exit_code": res.exit_code,
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


def _child(opts: RunOptions, read_fd: int, write_fd: int, relay: _Relay, parent: int) -> None:
    code = 0
    try:
        os.close(read_fd)
        os.setpgid(0, 0)  # a terminal's signals reach `loom` only; it relays them here
        die_with_parent(signal.SIGTERM)
        if os.getppid() != parent:  # `loom` died before that: nothing has started, nothing to stop
            os._exit(1)
        relay.become_child(parent)
        _pass_one(opts, write_fd, relay)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def run_cache_diff(opts: RunOptions) -> int:
    read_fd, write_fd = os.pipe()
    relay = _Relay()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child(opts, read_fd, write_fd, relay, parent)
    os.close(write_fd)
    relay.peer = pid
    child = {"pid": pid}
    late: list[int] = []  # a signal while pass 1 is awaited (pass 2 is done)

    def amend(run: Run, exit_code: int, error: str | None) -> tuple[int, str | None]:
        def on_signal(signum: int, _frame: object) -> None:
            late.append(signum)
            relay(signum)

        forward = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            raw = _read_all(read_fd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child["pid"], 0)
            child["pid"] = 0
        finally:
            for s, h in forward.items():
                signal.signal(s, h)
        if late and exit_code not in INTERRUPTED:
            exit_code = ExitCode.SIGINT if late[0] == signal.SIGINT else ExitCode.SIGTERM
            error = f"interrupted by {signal.Signals(late[0]).name}"
        return _compare(run, exit_code, error, raw)

    term = Terminal(verbose=opts.verbose, quiet=opts.quiet, prefix="[cache on] ")
    try:
        result = run_local(opts._replace(cache_enabled=True, fingerprint_outputs=True), term, amend, relay=relay)
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
    passes: list[dict[str, Any]] = [
        {"cache": "off", "run_id": off.get("run_id"), "logs_dir": off.get("logs_dir"), "status": off.get("status"),
         "receipt": off.get("receipt")},
        {"cache": "on", "run_id": run.run_id, "logs_dir": run.logs_dir,
         "status": "success" if exit_code == 0 else "failure"},
    ]
    if exit_code in INTERRUPTED or off.get("exit_code") in INTERRUPTED:
        return _interrupted(run, exit_code, error, off, passes)
    if "failed" in off:
        run.receipt["cache_diff"] = {"error": off["failed"]}
        return ExitCode.FAILED, f"--cache-diff: {off['failed']}"
    outcomes = run.sup.outcomes if run.sup is not None else {}
    on = {n: JobOutcome(o.status, o.exit_code, o.outputs, tuple(o.cache_hits)) for n, o in outcomes.items()}
    off_jobs = {n: JobOutcome(s, c, outs, hits) for n, (s, c, outs, hits) in off["jobs"].items()}
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


def _interrupted(run: Run, exit_code: int, error: str | None, off: dict[str, Any],
                 passes: list[dict[str, Any]]) -> tuple[int, str | None]:
    """A pass was interrupted: its jobs were canceled, so nothing is compared (a canceled job is no
    evidence against a cache key) and nothing quarantined; the exit code is the signal's."""
    if exit_code not in INTERRUPTED:  # only pass 1 was (its signal came from elsewhere)
        exit_code, error = int(off["exit_code"]), off.get("error")
    run.receipt["cache_diff"] = {"passes": passes, "jobs": [], "quarantined": [], "nondeterministic": [],
                                 "interrupted": error or "interrupted"}
    run.term.line("cache-diff: interrupted; nothing compared, nothing quarantined")
    return exit_code, error
