"""Atomic JSON documents for the cache store. Runs in whichever process touches the cache
(worker, supervisor, `loom cache`); never under `.loom/.runtime/{logs,receipts}` (the writer's).

Temp file in the same folder, fsync, rename: a reader sees the old document or the new one, never half.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_json(path: Path, doc: Any, *, compact: bool = False, durable: bool = True) -> None:
    """`compact` skips indentation, which forces json's pure-Python encoder (slow for big lists).
    `durable=False` skips the fsync: still atomic for readers, but may be lost or torn by a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":")) if compact else json.dumps(
        doc, ensure_ascii=False, indent=2
    )
    data = (text + "\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The parsed document, or None when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
