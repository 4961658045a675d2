"""Writing cache archives: a POSIX tar stream compressed with zstandard. Runs in the worker process.

Plain members get a ustar header built here (tarfile's `TarInfo.tobuf` cost ~35 µs a member, a third
of the save time on a tree of many small files); long or non-ASCII names and links fall back to
tarfile's PAX headers, so the output is always a standard archive that `tar` reads. File content is
read once: hashed (sha256, for the metadata) as it is written. Mtimes are whole seconds, as in tar;
owners are not recorded; set-uid / set-gid bits are dropped.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from loomrun.globs import ALL_DIRS, match_paths
from loomrun.oserror import printable

# Chosen by measurement (scripts/bench_cache.py --levels, and zstd alone on 50 MB of the bench's
# text-like data, best of 3): level 1 compresses text in 0.18 s / 13.3 MB, level 3 in 0.22 s / 12.7 MB,
# level 6 in 0.75 s / 12.7 MB; random data is stored as is at every level. On the 100 MB mixed tree
# that is 52.6 MB at level 1 vs 51.8 MB at level 3 (+1.5%) for ~20% less compression CPU. A save
# sits on every job's critical path and local disk is cheap, so level 1. Threads: zstd's own workers
# (-1 = one per CPU) overlap compression with the walk, as `tar | zstd -T0` does; under heavy load
# single-threaded (0) was as fast, never clearly faster.
LEVEL = 1
THREADS = -1
_BUF = 1 << 20
_BLOCK = 512
_RECORD = 20 * _BLOCK
_MODE_MASK = 0o1777


@dataclass
class PackStats:
    files: list[dict[str, Any]] = field(default_factory=list)  # per-member metadata
    total_size: int = 0  # bytes of regular-file content
    warnings: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # patterns that named nothing


def _ustar(name: bytes, mode: int, size: int, mtime: int, kind: bytes, link: bytes) -> bytes:
    header = b"".join((
        name.ljust(100, b"\0"),
        b"%07o\0" % mode, b"0000000\0", b"0000000\0",
        b"%011o\0" % size, b"%011o\0" % mtime,
        b" " * 8,  # the checksum counts its own field as spaces
        kind, link.ljust(100, b"\0"),
        b"ustar\x0000", b"\0" * 64, b"0000000\0", b"0000000\0",
    )).ljust(_BLOCK, b"\0")
    return header[:148] + b"%06o\0 " % sum(header) + header[156:]


class _TarWriter:
    """Appends members to a tar stream, batching small writes into one call to `raw`."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.buf = bytearray()
        self.offset = 0

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self.offset += len(data)
        if len(data) >= _BUF // 4:
            self.flush()
            self.raw.write(data)
            return
        self.buf += data
        if len(self.buf) >= _BUF:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.raw.write(bytes(self.buf))
            self.buf.clear()

    def header(self, rel: str, mode: int, size: int, mtime: int, kind: bytes, link: str = "") -> None:
        if kind == tarfile.DIRTYPE:
            rel += "/"
        name, target = rel.encode(), link.encode()
        if (len(name) <= 100 and len(target) <= 100 and name.isascii() and target.isascii() and size < 8**11
                and 0 <= mtime < 8**11):  # else PAX, which holds any name, size and time
            self._write(_ustar(name, mode, size, mtime, kind, target))
            return
        info = tarfile.TarInfo(rel)
        info.mode, info.size, info.mtime, info.type, info.linkname = mode, size, mtime, kind, link
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def content(self, fh: IO[bytes], size: int, sha: Any) -> None:
        left = size
        while left > 0:
            data = fh.read(min(left, _BUF))
            if not data:
                raise OSError(f"file shrank while it was being cached ({size - left} of {size} bytes)")
            sha.update(data)
            self._write(data)
            left -= len(data)
        if size % _BLOCK:
            self._write(b"\0" * (_BLOCK - size % _BLOCK))

    def close(self) -> None:
        self._write(b"\0" * (2 * _BLOCK))
        if self.offset % _RECORD:
            self._write(b"\0" * (_RECORD - self.offset % _RECORD))
        self.flush()


def collect(workspace: Path, patterns: Sequence[str], unmatched: list[str] | None = None) -> list[str]:
    """Sorted members to archive: matched files and symlinks plus the real directories under matched
    directories (so empty directories and directory modes survive). Parents sort before children.
    Patterns that name nothing are appended to `unmatched`."""
    return match_paths(workspace, patterns, dirs=ALL_DIRS, unmatched=unmatched)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a name that is not UTF-8 on disk (os gives it surrogate escapes)
        return False
    return True


def _add(tar: _TarWriter, workspace: Path, rel: str, stats: PackStats) -> None:
    """Append one member; a path the archive (or its UTF-8 metadata) cannot hold is skipped with a
    warning, never a failed save."""
    full = os.path.join(workspace, rel)
    if not _utf8(rel):
        stats.warnings.append(f"cache save: {printable(rel)}: the name is not UTF-8; skipped")
        return
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        stats.warnings.append(f"cache save: {rel} disappeared while it was being cached; skipped")
        return
    mode, mtime = stat.S_IMODE(st.st_mode) & _MODE_MASK, int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        tar.header(rel, mode, 0, mtime, tarfile.DIRTYPE)
        stats.files.append({"path": rel, "type": "dir", "mode": mode})
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(full)
        if not _utf8(target):
            stats.warnings.append(f"cache save: {rel}: the link target is not UTF-8; skipped")
            return
        tar.header(rel, mode, 0, mtime, tarfile.SYMTYPE, target)
        stats.files.append({"path": rel, "type": "symlink", "target": target})
    elif stat.S_ISREG(st.st_mode):
        with open(os.open(full, os.O_RDONLY | os.O_NOFOLLOW), "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            sha = hashlib.sha256()
            tar.header(rel, mode, size, mtime, tarfile.REGTYPE)
            tar.content(fh, size, sha)
        stats.total_size += size
        stats.files.append({"path": rel, "type": "file", "mode": mode, "size": size, "sha256": sha.hexdigest()})
    else:
        stats.warnings.append(f"cache save: {rel} is not a file, directory or symlink; skipped")


def pack(dest: IO[bytes], workspace: Path, patterns: Sequence[str], *, level: int = LEVEL,
         threads: int = THREADS) -> PackStats:
    """Write a zstd-compressed tar of the paths matched by `patterns` (workspace-relative) to `dest`."""
    stats = PackStats()
    cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    with cctx.stream_writer(dest, closefd=False) as zw:
        tar = _TarWriter(zw)
        for rel in collect(workspace, patterns, stats.unmatched):
            _add(tar, workspace, rel, stats)
        tar.close()
    return stats
