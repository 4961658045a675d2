"""Starting the writer process: the only part of the writer the `loom` process imports.

`spawn` forks; the child imports the writer's code (`process.py` and what it needs: the run log, its
documents, events, redaction, tails) and runs it. The supervisor never imports that code, which cost
its start-up ~2.5 ms (measured): the writer imports it instead, on the other core, while the
supervisor loads the workflow (`WriterLink.begin`, then `ready`).
"""

from __future__ import annotations

import os
import signal
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import NamedTuple

from loomrun.proctree import close_fds_except


class WriterHandle(NamedTuple):
    """The supervisor's side of the writer process."""

    pid: int
    conn: Connection
    sentinel: int  # a pidfd: readable when the writer exits


def spawn() -> WriterHandle:
    parent, child = Pipe(duplex=True)
    pid = os.fork()
    if pid == 0:  # the writer
        code = 1
        try:
            parent.close()
            os.setpgid(0, 0)  # out of the terminal's foreground group: ^C never reaches it
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            close_fds_except(child.fileno())
            from loomrun.writer.process import Writer

            code = Writer(child).run()
        finally:
            os._exit(code)
    child.close()
    return WriterHandle(pid, parent, os.pidfd_open(pid))
