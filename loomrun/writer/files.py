"""Durable file primitives. Runs in the writer process only.

Documents: temp file in the same folder, fsync, rename (a reader never sees half a document).
JSONL: whole lines in one `write()` on an O_APPEND fd; a short write (disk full) is rolled back
with ftruncate so a file never ends in half a line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def write_document(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


class Documents:
    """Documents made durable in batches: each is written to a temp file at once, then one syncfs()
    makes every pending temp file durable and the renames follow. A reader sees either the previous
    document or the complete new one; a crash loses only documents not yet renamed, never the order
    (the receipt, written last with its own fsync, comes after a flush)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []
        self.counter = 0

    def write(self, path: Path, doc: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode()
        self.counter += 1
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{self.counter}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        self.pending.append((tmp, path))

    def flush(self) -> None:
        if not self.pending:
            return
        syncfs(self.pending[0][0].parent)
        for tmp, path in self.pending:
            os.replace(tmp, path)
        self.pending.clear()


def syncfs(folder: Path) -> None:
    """Flush the filesystem holding `folder` (not every filesystem, as os.sync() would)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC is None or _LIBC.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _load_libc() -> Any:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()


class LineFile:
    """An append-only JSONL file written a whole batch of lines per write()."""

    __slots__ = ("fd", "path", "seq")

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.seq = 0
        if os.fstat(self.fd).st_size:  # a writer taking over after a crash continues the numbering
            with open(path, "rb") as fh:
                self.seq = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))

    def write(self, data: bytes) -> None:
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            written = os.write(self.fd, data)
        except OSError:
            os.ftruncate(self.fd, start)
            raise
        if written != len(data):
            os.ftruncate(self.fd, start)
            raise OSError(28, "No space left on device (short write)", str(self.path))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
