"""Folders as tar bytes, for remote runs: the snapshot going out, artifacts and cache entries
coming back, dependency artifacts and cache restores going in. Used by the gateway (on the machine
that runs `loom`) and by the node actor (on a cluster node); no process of its own.

Plain uncompressed tar: the bytes cross a LAN or the loopback and are unpacked at once; zstd would
cost more CPU than it saves there. Members are relative paths below the folder; unpacking uses the
`tar` filter (no absolute paths, nothing outside the destination, no device files) and keeps
symlinks as symlinks, as the host provider's copies do.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path


def pack_tree(folder: Path) -> bytes:
    """Every file, symlink and folder below `folder`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(folder)):
            tar.add(folder / name, arcname=name, recursive=True)
    return buf.getvalue()


def pack_files(folder: Path, rels: Iterable[str]) -> bytes:
    """The given relative paths below `folder` (files and symlinks), parents implied."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in rels:
            tar.add(folder / rel, arcname=rel, recursive=False)
    return buf.getvalue()


def unpack(data: bytes, dest: Path) -> list[str]:
    """Unpack into `dest` (made if missing); the relative paths of the files and links unpacked."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        members = tar.getmembers()
        tar.extractall(dest, filter="tar")
    return sorted(m.name for m in members if not m.isdir())
