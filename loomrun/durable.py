"""Atomic, durable file writes shared by the writer (logs, receipts) and the cache store
(metadata, quarantine). Pure mechanism: which process may write where is the callers' rule.

A document goes to a temp file in the same folder and is renamed over the target, so a reader
sees the old document or the new one, never half of one; `fsync` makes it survive a crash too.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

_COUNTER = itertools.count()


def write_temp(path: str | os.PathLike[str], data: bytes, *, fsync: bool,
               ensure_dir: Callable[[str], None] | None = None) -> str:
    """Write `data` to a new temp file beside `path` and return the temp's path. The folder is
    created by `ensure_dir` when given (the writer's `Folders`: one mkdir per new folder, none for a
    known one), else by `os.makedirs`."""
    folder, name = os.path.split(os.fspath(path))
    if ensure_dir is not None:
        ensure_dir(folder)
    else:
        os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{next(_COUNTER)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode  # the C encoder


def _value(v: Any) -> str:
    """One JSON value. The C encoder behind `_ENCODE` is set up anew on every call for anything but
    a string, so the scalars most document fields hold (null, booleans, integers) are spelled here."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if type(v) is int:
        return int.__repr__(v)
    return _ENCODE(v)


_COMPACT = json.JSONEncoder(separators=(",", ":")).encode


def json_pieces(value: Any, depth: int, raw: type[str] | None = None) -> Iterator[str]:
    """Compact JSON text of `value` in pieces, its dicts and lists `depth` levels down item by item
    (a `raw` string is JSON text already: given as it is). Python 3.11's encoder makes a string of
    every token before it joins them: a 1,000-job Graph IR, 186 KB of text, took 2.1 MB at once
    in one `json.dumps`. In pieces, at most one item's tokens exist at a time."""
    if raw is not None and isinstance(value, raw):
        yield value
    elif depth and isinstance(value, dict):
        sep = "{"
        for k, v in value.items():
            yield f"{sep}{_COMPACT(str(k))}:"
            yield from json_pieces(v, depth - 1, raw)
            sep = ","
        yield "}" if sep == "," else "{}"
    elif depth and isinstance(value, list | tuple):
        sep = "["
        for v in value:
            yield sep
            yield from json_pieces(v, depth - 1, raw)
            sep = ","
        yield "]" if sep == "," else "[]"
    else:
        yield _COMPACT(value)


def encode_json(doc: Any, *, compact: bool = False) -> bytes:
    """A mapping is written one top-level key per line, each value on its line (readable with `cat`
    or `grep`, and encoded by json's C encoder: with `indent` json falls back to its pure-Python
    encoder, measured ~4x slower on loom's documents). `compact`: one line."""
    if compact:
        return (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    if isinstance(doc, dict) and doc:
        return ("{\n" + ",\n".join(f"  {_ENCODE(str(k))}: {_value(v)}" for k, v in doc.items()) + "\n}\n").encode()
    return (_ENCODE(doc) + "\n").encode()


def write_json(path: str | os.PathLike[str], doc: Any, *, compact: bool = False, durable: bool = True) -> None:
    """Temp file, fsync (unless `durable=False`), rename."""
    os.replace(write_temp(path, encode_json(doc, compact=compact), fsync=durable), path)


def read_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON document that should be a mapping, or {} when it is missing, unreadable, torn or not
    a mapping: for readers of documents another process may be writing or may have left half-done
    (a dead run's, a report's), which carry on with what they can."""
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def syncfs(folder: str | os.PathLike[str]) -> None:
    """Flush the filesystem holding `folder` (not every filesystem, as os.sync() would)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC is None or _LIBC.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _load_libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()
