"""The guard of one node actor. Runs as its own small process on the node: `python -m
workers.remote.guard RUN_ID HOME`, started by the actor, then re-parented away from it.

Ray kills an actor's process outright when its owner (the gateway, so `loom`) dies, when the actor
is killed, or when the node's raylet goes; the job's steps, in process groups of their own, would
outlive it. The actor tells its guard, through a pipe, which job it is running (`job NAME`, plus `docker` for
a job on the node's Docker engine, then `done`). When the pipe reaches EOF (the actor is gone,
however it went) with a job still open, the guard stops that job's processes as a local worker
would (spec §9.3: TERM, grace, KILL of every process carrying the job's `LOOM_RUN_ID`/`LOOM_JOB_ID`,
`loomrun.proctree`); for a Docker job it then removes the job's containers, network and volumes
from this node's engine (labelled `loom.run_id`/`loom.job_id`, as the local reaper finds them: that
one only ever sees the engine of the machine running `loom`). Then it removes the actor's folder
(its copy of the snapshot, the job's workspace) and exits.

It forks once at start and its first process exits, so it is not a descendant of the actor: the
host provider stops "every descendant of this process" and must not find the guard among them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

GRACE_S = 2.0  # short: the job's owner is gone (spec §12: remote jobs die within 5 s)


def start(run_id: str, home: Path) -> subprocess.Popen[bytes]:
    """Start the guard of the calling actor. Its first process exits once it forked the guard
    proper: wait for it (`Popen.wait`) before the actor becomes a subreaper. `stdin` is the pipe
    to tell the guard about jobs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen([sys.executable, "-m", "workers.remote.guard", run_id, str(home)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True, close_fds=True)


def main(argv: list[str]) -> None:
    run_id, home = argv[1], Path(argv[2])
    if os.fork():
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    job: str | None = None
    docker = False
    for raw in sys.stdin.buffer:
        line = raw.rstrip(b"\n").decode("utf-8", "replace")
        if line.startswith("job "):
            job, docker = line[4:], False
        elif line == "docker":
            docker = True
        elif line == "done":
            job = None
    if job is not None:
        _stop(run_id, job)
        if docker:
            _reap_docker(run_id, job)
    shutil.rmtree(home, ignore_errors=True)
    for folder in (home.parent, home.parent.parent):  # the run's folder, then loom-remote/, once empty
        try:
            folder.rmdir()
        except OSError:
            break


def _stop(run_id: str, job: str) -> None:
    from loomrun.proctree import stop_processes, tagged

    stop_processes(lambda: tagged(run_id, job), GRACE_S)


def _reap_docker(run_id: str, job: str) -> None:
    """The job's Docker objects on this node's engine (its processes are stopped: force-remove is
    all that is left). An engine that does not answer leaves them to the next run's reaper there."""
    try:
        from workers.providers.docker.reaping import reap_run

        reap_run(run_id, job)
    except Exception:  # nobody to tell: the guard's owner is gone
        return


if __name__ == "__main__":
    main(sys.argv)
