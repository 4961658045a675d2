"""Worker entry: runs in the forked per-job process. Own session, own fds, one job, then exit.

Exit codes are reserved for the runner's own failures: 0 means "the job's result was reported"
(whatever it was), 70 means the worker could not start the job, 71 that it lost its supervisor.
An error here crosses to the supervisor as data (JobFinished with a message), never as a pickle
of an exception.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import socket
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NoReturn

from loomrun.proctree import close_fds_except, reap_zombie_children, set_child_subreaper
from loomrun.protocol import messages as m
from loomrun.protocol.spec import WorkerSpec
from loomrun.workflow.model import Job
from workers.job import JobRunner
from workers.report import Reporter


def _isolate(keep: set[int]) -> None:
    gc.disable()  # short-lived: not collecting avoids copy-on-write faults on inherited pages
    os.setsid()  # a terminal ^C reaches only the supervisor, which decides
    signal.set_wakeup_fd(-1)
    # Default dispositions: steps inherit them through exec, and a step must get ^C and TERM like any
    # program would (an ignored SIGINT here would be ignored by every step). The terminal's ^C does
    # not reach us anyway: this process leads its own session.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGQUIT, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_DFL:  # (~15 us a call; most already are)
            signal.signal(sig, signal.SIG_DFL)
    # But not SIGPIPE: a send to a supervisor or writer that died must be an EPIPE this process
    # handles (stop the job, clean up: remove its secret files), not its death. Steps still get the
    # default: subprocess restores SIGPIPE in the child before exec (`restore_signals`).
    if signal.getsignal(signal.SIGPIPE) is not signal.SIG_IGN:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    close_fds_except(*keep)  # every inherited fd (other workers' pipes, the run lock, ...)
    set_child_subreaper()


def worker_main(spec_data: bytes, sup: Connection, writer: Connection, broker: Connection | None = None) -> NoReturn:
    """`spec_data`: the pickled WorkerSpec, as the supervisor sent it. It is unpickled here, not in the
    fork server: every page the fork server writes while a worker it forked still shares it is a
    copy-on-write fault, and unpickling a spec there wrote ~100 of them for every job."""
    code = m.WORKER_EXIT_BOOT_ERROR
    rep: Reporter | None = None
    job_id = "?"
    try:
        _isolate({sup.fileno(), writer.fileno(), *([broker.fileno()] if broker is not None else [])})
        spec: WorkerSpec = pickle.loads(spec_data)
        job_id = spec.job.name
        rep = Reporter(job_id, writer, sup)
        runner = JobRunner(spec, rep, broker)
        result = runner.run()
        code = m.WORKER_EXIT_LOST_SUPERVISOR if runner.lost_supervisor else m.WORKER_EXIT_OK
        rep.flush()
        writer.close()  # EOF first: the writer has every record of the job once the supervisor says so
        try:
            sup.send(result)
        except OSError:
            code = m.WORKER_EXIT_LOST_SUPERVISOR
    except BaseException as exc:  # reported as data; the supervisor names it worker_crashed
        if rep is not None:
            with contextlib.suppress(Exception):
                rep.flush()  # what the job said before the error
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        with contextlib.suppress(Exception):
            sup.send(m.JobFinished(job_id, "failed", None, m.WORKER_CRASHED,
                                   f"worker error: {text}", {}, ()))
    finally:
        try:
            reap_zombie_children()
        finally:
            os._exit(code)


def warm_up() -> m.JobFinished | None:
    """Run one throwaway host job (a `true` step, its records sent to socket pairs nobody reads)
    in the calling process: the fork server does this once before it forks any worker. Every
    worker then inherits code that is already specialized and caches that are already filled
    instead of writing them itself, each write costing a copy-on-write page fault (measured: worker
    CPU 4.0 -> 3.4 ms, page faults 925 -> 845 per `true` job). It writes nothing anywhere (no
    artifacts, caches or secrets; the step runs in `/`), so a fork server killed in the middle of
    it (a usage error ends `loom` at once) leaves nothing behind. Returns the job's result; never
    raises: a warm-up that cannot run (None) only costs that saving."""
    result = None
    with contextlib.suppress(Exception):
        folder = Path(os.sep)
        spec = WorkerSpec(run_id="warm-up", pipeline_id="warm-up", workspace=folder, runtime_dir=folder, env={},
                          job=Job(name="warm-up", stage="warm-up", script=("true",)))
        writer, writer_peer = socket.socketpair()
        sup, sup_peer = socket.socketpair()
        with writer_peer, sup_peer:
            rep = Reporter(spec.job.name, Connection(writer.detach()), Connection(sup.detach()))
            try:
                result = JobRunner(spec, rep).run()
                rep.flush()
            finally:
                rep.writer.close()
                rep.supervisor.close()
    return result
