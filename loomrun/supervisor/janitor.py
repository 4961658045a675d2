"""Short-lived helper processes that clean up after dead runs. Started by the supervisor.

The supervisor never imports `docker`: removing a dead run's containers happens in a forked child
that imports the Docker provider there, so `loom run` on a host-only workflow never pays for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple


class Janitor(NamedTuple):
    pid: int
    what: str

    def wait(self, timeout_s: float) -> bool:
        """Reap it; True when it finished in time (otherwise it is killed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return True
            time.sleep(0.02)
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        return False


def spawn(what: str, fn: Callable[[], None]) -> Janitor:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setsid()
            os.closerange(3, 65536)
            fn()
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return Janitor(pid, what)


def docker_reap_leftovers(alive: set[str]) -> None:
    from workers.providers.docker.reaping import reap_leftovers

    # Only loom's own run ids: objects of other tools (or of tests driving the provider) stay.
    reap_leftovers(alive, prefix="loom-run-")


def docker_reap_run(run_id: str, job_id: str | None) -> None:
    from workers.providers.docker.reaping import reap_run

    reap_run(run_id, job_id)
