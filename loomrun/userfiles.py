"""Reading a file the user names: a workflow, an include, a config layer. PURE; any process.

Only regular files are read. Opening a FIFO blocks until someone writes to it and a character
device may never end, so either would hang every `loom` command: both are refused from a `stat`,
before anything opens them. The open itself is non-blocking and re-checked with `fstat`, in case
the path was swapped in between. Reads are bounded: the caller gets at most `limit + 1` bytes and
decides what "too large" means.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class NotRegularFile(OSError):
    """A path that is not a regular file (nor a directory, which keeps its own `EISDIR`)."""


def _refuse(path: Path | str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    raise NotRegularFile(errno.EINVAL, f"not a regular file ({kind})", str(path))


def refuse_special(path: Path | str) -> None:
    """NotRegularFile when `path` is a FIFO, a device or a socket (from a `stat`; nothing is opened)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISDIR(mode):
        _refuse(path, mode)


def read_regular(path: Path | str, limit: int) -> bytes:
    """Up to `limit + 1` bytes of a regular file; OSError (with a readable `strerror`) otherwise."""
    _refuse(path, os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _refuse(path, os.fstat(fd).st_mode)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
