"""Atomic JSON documents for the cache store. Runs in whichever process touches the cache
(worker, supervisor, `loom cache`); never under `.loom/.runtime/{logs,receipts}` (the writer's).

Temp file in the same folder, fsync, rename: a reader sees the old document or the new one, never half.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loomrun import durable as durable_io


def write_json(path: Path, doc: Any, *, compact: bool = False, durable: bool = True) -> None:
    """`durable=False` skips the fsync: still atomic for readers, but may be lost or torn by a crash."""
    durable_io.write_json(path, doc, compact=compact, durable=durable)


def read_json(path: Path) -> Any:
    """The parsed document, or None when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
