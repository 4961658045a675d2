"""One short line for a failed file operation, for messages a person reads. PURE.

Used by workers (artifact copies, cache saves and restores) and by the cache store in any process.
A copy error can carry a multi-kilobyte text (`shutil.Error` lists every failed file; paths under
`.loom/.runtime/` are long): the line names the first cause, with paths made relative to the folders
the reader knows and long ones cut in the middle.
"""

from __future__ import annotations

import shutil
from pathlib import Path

MAX_PATH = 80
MAX_LINE = 300


def describe(exc: BaseException, *roots: Path | str) -> str:
    """`<cause>: <path>` (`(and N more)` for a shutil.Error); paths relative to the first of `roots`
    that holds them."""
    more = 0
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        first = exc.args[0][0]
        more = len(exc.args[0]) - 1
        cause, path = (str(first[2]), str(first[1])) if len(first) == 3 else (str(first), "")
    elif isinstance(exc, OSError):
        cause, path = str(exc.strerror or exc), str(exc.filename or "")
    else:
        cause, path = str(exc) or type(exc).__name__, ""
    cause = _relative(cause.splitlines()[0] if cause else type(exc).__name__, roots)
    path = _relative(path, roots)
    if len(path) > MAX_PATH:
        path = f"{path[:MAX_PATH // 2 - 2]}...{path[-(MAX_PATH // 2 - 1):]}"
    line = f"{cause}: {path}" if path and path not in cause else cause
    line += f" (and {more} more)" if more else ""
    return line if len(line) <= MAX_LINE else line[:MAX_LINE - 3] + "..."


def _relative(text: str, roots: tuple[Path | str, ...]) -> str:
    for root in roots:
        text = text.replace(f"{root}/", "")
    return text


def printable(name: str) -> str:
    """A file name as a person can read it: bytes that are not UTF-8 shown as `\\xff`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
