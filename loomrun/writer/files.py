"""Durable file primitives. Runs in the writer process only.

Documents: temp file in the same folder, fsync, rename (a reader never sees half a document).
JSONL: whole lines in one `write()` on an O_APPEND fd; a short write (disk full) is rolled back
with ftruncate so a file never ends in half a line.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from loomrun.durable import encode_json, syncfs, write_json, write_temp

# One encoder for every event line: json.dumps with non-default options builds a new JSONEncoder on
# each call (~16 event lines per job).
dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def write_document(path: str | os.PathLike[str], doc: Any) -> None:
    write_json(path, doc)


# chattr +T through the generic ioctl encoding (x86-64 and arm64 only: other architectures number
# ioctls differently, and a wrong number must never reach the kernel).
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602
_FS_TOPDIR_FL = 0x00020000
_GENERIC_IOCTLS = os.uname().machine in ("x86_64", "aarch64")


def spread_children(folder: str | os.PathLike[str]) -> bool:
    """Mark `folder` as the top of unrelated trees (`chattr +T`), so that ext4 puts each new
    subfolder (a run's logs) in a block group of its own choosing instead of next to its siblings.
    Measured on this machine's ext4 without a journal: right after a test suite deleted thousands of
    files, creating a file scans every inode freed in that block group in the last minutes, and a
    100-job run's writer spent 0.4 s in the kernel for its 1,500 files; with the flag, 0.06 s, as on
    a quiet disk. A hint only: False where the filesystem has no such flag (tmpfs, xfs)."""
    if not _GENERIC_IOCTLS:
        return False
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & _FS_TOPDIR_FL:
            flags[0] |= _FS_TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags, True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Folders:
    """Creates the folders of the logs tree, each with a single mkdir: the parent is made first
    when it is not known to exist, and every folder made (or found) is remembered. A job's
    seven folders cost seven mkdir calls; `Path.mkdir(parents=True)` from the leaf cost about
    twice that, half of them failing."""

    __slots__ = ("made",)

    def __init__(self, *known: str) -> None:
        self.made: set[str] = set(known)

    def ensure(self, folder: str) -> None:
        if folder in self.made:
            return
        parent = os.path.dirname(folder)
        if parent != folder:
            self.ensure(parent)
        try:
            os.mkdir(folder)
        except FileExistsError:
            pass
        self.made.add(folder)


class Documents:
    """Documents made durable in batches: each is written to a temp file at once, then one syncfs()
    makes every pending temp file durable and the renames follow. A reader sees either the previous
    document or the complete new one. The writer flushes at most every `FLUSH_EVERY_S` (a syncfs
    costs ~1 ms and more on a busy disk; one per job was a tenth of a 100-job run's writer time);
    if it dies in between, the writer that takes over renames the complete temp files it finds
    (`recover_temps`), so no document of a reported job is lost. The receipt, written last with its
    own fsync, comes after a flush."""

    FLUSH_EVERY_S = 0.05

    def __init__(self, folders: Folders | None = None) -> None:
        self.pending: list[tuple[str, str]] = []  # (temp file, document)
        self.folders = folders or Folders()
        self.since = 0.0  # monotonic time of the oldest pending document

    def write(self, path: str | os.PathLike[str], doc: Any) -> None:
        if not self.pending:
            self.since = time.monotonic()
        path = os.fspath(path)
        self.pending.append((write_temp(path, encode_json(doc), fsync=False, ensure_dir=self.folders.ensure), path))

    def due_in(self) -> float | None:
        """Seconds until the pending documents must be flushed (None: nothing pending)."""
        return max(0.0, self.since + self.FLUSH_EVERY_S - time.monotonic()) if self.pending else None

    def flush(self) -> None:
        if not self.pending:
            return
        syncfs(os.path.dirname(self.pending[0][0]))
        for tmp, path in self.pending:
            os.replace(tmp, path)
        self.pending.clear()


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<n>\d+)\.tmp$")


def recover_temps(root: Path) -> int:
    """After a writer died: every complete temp document under `root` becomes its document (oldest
    first, so the newest version wins), a torn one is removed. Returns how many were recovered."""
    found: list[tuple[int, int, Path, Path]] = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            match = _TEMP.match(name)
            if match:
                tmp = Path(folder) / name
                found.append((int(match["pid"]), int(match["n"]), tmp, tmp.with_name(match["name"])))
    recovered = 0
    for _pid, _n, tmp, path in sorted(found):
        try:
            json.loads(tmp.read_bytes())
        except (OSError, ValueError):
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, path)
        recovered += 1
    if recovered:
        syncfs(root)
    return recovered


class LineFile:
    """An append-only JSONL file written a whole batch of lines per write()."""

    __slots__ = ("fd", "path", "seq")

    def __init__(self, path: str, folders: Folders) -> None:
        folders.ensure(os.path.dirname(path))
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
