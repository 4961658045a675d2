"""Safely unpacking cache archives (zstandard-compressed tar). Runs in the worker process.

Unpacking trusts nothing in the archive. Every member is checked before it is written, and the
whole archive is first unpacked into a staging folder inside the workspace, then merged into place,
so a refused archive leaves the workspace untouched and nothing is ever written outside it.
Refused: absolute names, `..` components, devices, fifos and other special members, symlinks whose
target is absolute or resolves outside the workspace, hard links to anything but an earlier regular
member, and any member that would be written through a symlink. The merge never follows a symlink
that already exists in the workspace: a link in the way is replaced, not written through.
Set-uid and set-gid bits are dropped; other mode bits and mtimes are kept; owners are not.
"""

from __future__ import annotations

import os
import queue
import shutil
import stat
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import zstandard

_BUF = 1 << 20
_MODE_MASK = 0o1777  # no set-uid / set-gid from a cache


class CacheEntryError(Exception):
    """A cache entry that cannot be restored (corrupt, or refused as unsafe)."""


class UnsafeArchiveError(CacheEntryError):
    """An archive member that would escape the workspace or is of a refused kind."""



@dataclass
class UnpackStats:
    files: int = 0
    total_size: int = 0
    dirs: dict[str, tuple[int, float]] = field(default_factory=dict)  # rel -> (mode, mtime)
    symlinks: list[str] = field(default_factory=list)
    made: set[str] = field(default_factory=set)  # directories known to exist (saves EEXIST round trips)


class _Prefetch:
    """Decompresses on a background thread (zstd releases the GIL) while the caller unpacks, like
    `zstd -d | tar -x`. Forward-seekable, which is all tarfile's "r:" mode needs when members are
    consumed in order. (Its "r|" stream mode re-copies its buffer on every header read.)"""

    def __init__(self, reader: Any) -> None:
        self.pos = 0
        self.chunk: bytes | None = b""
        self.off = 0
        self.error: BaseException | None = None
        self.queue: queue.Queue[bytes] = queue.Queue(maxsize=8)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._pump, args=(reader,), daemon=True)
        self.thread.start()

    def _pump(self, reader: Any) -> None:
        try:
            while not self.stop.is_set():
                data = reader.read(_BUF)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the reading thread
            self.error = exc
            self._put(b"")

    def _put(self, data: bytes) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(data, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next_chunk(self) -> bool:
        if self.chunk is None:
            return False
        data = self.queue.get()
        if not data:
            if self.error is not None:
                raise self.error
            self.chunk, self.off = None, 0
            return False
        self.chunk, self.off = data, 0
        return True

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        want = size if size >= 0 else 1 << 62
        while want > 0:
            if (self.chunk is None or self.off >= len(self.chunk)) and not self._next_chunk():
                break
            assert self.chunk is not None
            piece = self.chunk[self.off:self.off + want]
            self.off += len(piece)
            want -= len(piece)
            parts.append(piece)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(data)
        return data

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        target = pos if whence == os.SEEK_SET else self.pos + pos
        if whence not in (os.SEEK_SET, os.SEEK_CUR) or target < self.pos:
            raise OSError("cache archive reader only seeks forward")
        while self.pos < target and self.read(min(target - self.pos, _BUF)):
            pass
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


# ---- unpack ------------------------------------------------------------------------------------


def _member_path(name: str) -> str | None:
    """Normalised relative path of a member, None for the root itself; raise when unsafe."""
    if name.startswith("/") or os.path.isabs(name):
        raise UnsafeArchiveError(f"member {name!r} has an absolute path")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise UnsafeArchiveError(f"member {name!r} contains '..'")
    return "/".join(parts) or None


def _inside(rel: str) -> bool:
    return rel != ".." and not rel.startswith("../") and not os.path.isabs(rel)


def _check_symlink(rel: str, target: str) -> None:
    if not target or os.path.isabs(target):
        raise UnsafeArchiveError(f"symlink {rel!r} points to the absolute path {target!r}")
    if not _inside(os.path.normpath(os.path.join(os.path.dirname(rel), target))):
        raise UnsafeArchiveError(f"symlink {rel!r} points outside the workspace ({target!r})")


def _check_parents(rel: str, links: set[str]) -> None:
    parent = os.path.dirname(rel)
    while parent:
        if parent in links:
            raise UnsafeArchiveError(f"member {rel!r} would be written through the symlink {parent!r}")
        parent = os.path.dirname(parent)


def _ensure_dir(path: str, stats: UnpackStats) -> None:
    if path not in stats.made:
        os.makedirs(path, exist_ok=True)
        stats.made.add(path)


def _clear_way(dest: str, links: set[str], rel: str, stats: UnpackStats, *, for_dir: bool) -> None:
    """A repeated member replaces the earlier one (tar semantics), never writes through it."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if not for_dir:
            shutil.rmtree(dest)
            stats.made.clear()
        return
    os.unlink(dest)
    links.discard(rel)


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str) -> None:
    src = tar.extractfile(member)
    if src is None:  # pragma: no cover - regular members always have data
        raise CacheEntryError(f"member {member.name!r} has no data")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "wb") as out:
        shutil.copyfileobj(src, out, _BUF)
        os.fchmod(fd, member.mode & _MODE_MASK)
        os.utime(fd, (member.mtime, member.mtime))


def _unpack_member(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: str, stats: UnpackStats,
                   links: set[str], regular: set[str]) -> None:
    rel = _member_path(member.name)
    if rel is None:
        return
    _check_parents(rel, links)
    dest = os.path.join(staging, rel)
    if member.isdir():
        _clear_way(dest, links, rel, stats, for_dir=True)
        _ensure_dir(dest, stats)
        stats.dirs[rel] = (member.mode & _MODE_MASK, member.mtime)
        return
    if not (member.isfile() or member.issym() or member.islnk()):
        raise UnsafeArchiveError(f"member {member.name!r} is a device, fifo or other special file")
    if member.issym():
        _check_symlink(rel, member.linkname)
    elif member.islnk():
        try:
            target = _member_path(member.linkname)
        except UnsafeArchiveError:
            target = None
        if target is None or target not in regular:
            raise UnsafeArchiveError(f"hard link {rel!r} points outside the archive ({member.linkname!r})")
    _ensure_dir(os.path.dirname(dest), stats)
    _clear_way(dest, links, rel, stats, for_dir=False)
    if member.issym():
        os.symlink(member.linkname, dest)
        links.add(rel)
        stats.symlinks.append(rel)
    elif member.islnk():
        os.link(os.path.join(staging, str(target)), dest, follow_symlinks=False)
        stats.files += 1
    else:
        _write_file(tar, member, dest)
        regular.add(rel)
        stats.files += 1
        stats.total_size += member.size


def _check_resolved_links(staging: str, stats: UnpackStats) -> None:
    """Chains of links can leave the tree even when each looks fine alone (`s -> .`, `t -> s/..`)."""
    real = os.path.realpath(staging)
    for rel in stats.symlinks:
        resolved = os.path.realpath(os.path.join(staging, rel))
        if resolved != real and not resolved.startswith(real + os.sep):
            raise UnsafeArchiveError(f"symlink {rel!r} resolves outside the workspace")


def _unpack(src: IO[bytes], staging: str) -> UnpackStats:
    stats = UnpackStats()
    links: set[str] = set()
    regular: set[str] = set()
    dctx = zstandard.ZstdDecompressor()
    try:
        with dctx.stream_reader(src, read_size=_BUF, closefd=False) as zr:
            ahead = _Prefetch(zr)
            try:
                with tarfile.TarFile(
                    mode="r",
                    fileobj=ahead,  # type: ignore[arg-type]  # "r" mode only reads and seeks
                    copybufsize=_BUF,
                ) as tar:
                    for member in tar:
                        _unpack_member(tar, member, staging, stats, links, regular)
            finally:
                ahead.close()
    except (tarfile.TarError, zstandard.ZstdError) as exc:
        raise CacheEntryError(f"archive is corrupt ({exc})") from exc
    _check_resolved_links(staging, stats)
    return stats


def _merge(src_dir: str, dst_dir: str) -> None:
    """Move staged entries into place; a real directory is merged into, anything else replaced."""
    with os.scandir(src_dir) as it:
        entries = list(it)
    for entry in entries:
        dst = os.path.join(dst_dir, entry.name)
        try:
            st = os.lstat(dst)
        except FileNotFoundError:
            os.rename(entry.path, dst)
            continue
        if entry.is_dir(follow_symlinks=False):
            if stat.S_ISDIR(st.st_mode):
                _merge(entry.path, dst)
                continue
            os.unlink(dst)
            os.rename(entry.path, dst)
        else:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(dst)
            os.replace(entry.path, dst)


def _apply_dir_modes(workspace: Path, dirs: dict[str, tuple[int, float]]) -> None:
    for rel in sorted(dirs, reverse=True):  # children before parents: a 0555 parent is set last
        mode, mtime = dirs[rel]
        full = os.path.join(workspace, rel)
        try:
            is_dir = stat.S_ISDIR(os.lstat(full).st_mode)
        except FileNotFoundError:
            continue
        if is_dir:
            os.chmod(full, mode)
            os.utime(full, (mtime, mtime))


def unpack(src: IO[bytes], workspace: Path) -> UnpackStats:
    """Safely unpack an archive into `workspace` (all or nothing); raise `CacheEntryError`."""
    staging = tempfile.mkdtemp(prefix=".loom-cache-restore-", dir=workspace)
    try:
        stats = _unpack(src, staging)
        _merge(staging, str(workspace))
        _apply_dir_modes(workspace, stats.dirs)
        return stats
    finally:
        shutil.rmtree(staging, ignore_errors=True)
