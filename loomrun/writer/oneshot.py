"""A short-lived writer process for commands that write one or two documents (`loom check`).

Called in the `loom` process; the writing itself happens in a forked child, so the rule "only the
writer process writes receipts" holds for every command. A failure comes back as one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loomrun.errors import LoomError


def write_documents(items: list[tuple[Path, Any]]) -> None:
    """Write each (path, document) atomically, in a short-lived writer process."""

    def write_all() -> None:
        from loomrun.writer.files import write_document

        for path, doc in items:
            write_document(path, doc)

    run_in_writer(write_all, items[0][0].parent if items else Path("."))


def run_in_writer(fn: Callable[[], None], where: Path) -> None:
    """Run `fn` (writer code) in a forked child: the writes happen in a writer process. A failure
    comes back as one line."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer child
        os.close(read_fd)
        code = 0
        try:
            fn()
        except BaseException as exc:  # reported as data to the parent, never a traceback
            msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            at = getattr(exc, "filename", None)
            os.write(write_fd, f"{msg}{f' ({at})' if at else ''}".encode()[:4000])
            code = 1
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        err = fh.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise LoomError(f"cannot write {where}: {err or 'writer process failed'}")
