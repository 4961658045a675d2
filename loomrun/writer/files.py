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

from loomrun.durable import encode_json, syncfs, write_json, write_temp


def dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def write_document(path: Path, doc: Any) -> None:
    write_json(path, doc)


class Documents:
    """Documents made durable in batches: each is written to a temp file at once, then one syncfs()
    makes every pending temp file durable and the renames follow. A reader sees either the previous
    document or the complete new one; a crash loses only documents not yet renamed, never the order
    (the receipt, written last with its own fsync, comes after a flush)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []
        self.made: set[Path] = set()

    def write(self, path: Path, doc: Any) -> None:
        self.pending.append((write_temp(path, encode_json(doc), fsync=False, made=self.made), path))

    def flush(self) -> None:
        if not self.pending:
            return
        syncfs(self.pending[0][0].parent)
        for tmp, path in self.pending:
            os.replace(tmp, path)
        self.pending.clear()


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
