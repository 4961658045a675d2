"""The cache store's size bound (spec §13, `runtime.cache.maxSize`), and the locks and marks it
relies on. Runs in the worker (after each save, and around each restore) and in `loom gc` /
`loom cache list` (the `loom` process).

* An entry's size is what its folder holds on disk (archive, metadata), by `stat` of each file.
* Its last use is the later of its save (`meta.json`'s mtime) and its last restore (the mtime of
  `used`, which every restore touches): a fresh save is as good as a restore.
* Eviction takes the least recently used entries until the store fits. Quarantined entries are
  evidence: never evicted, and they count. An entry whose lock is held is never evicted: a restore
  holds its key's lock shared for the whole restore (`reading`), a save's commit and `loom cache
  clear` hold it exclusive; eviction only ever tries it (non-blocking) and passes on.
* An entry goes under its exclusive lock, `meta.json` first: that is the commit point, so from
  then on a restore finds no entry, and no restore can be in the middle of it. Then its archives,
  its mark and its folder.
* Evictions are serialized by `locks/.evict.lock` (a key's lock file never starts with `.`), so two
  runs saving at once do not both evict for the same excess.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

META = "meta.json"
USED = "used"
EVICT_LOCK = ".evict"  # locks/.evict.lock


class Entry(NamedTuple):
    dirname: str  # folder under entries/ (the key's encoding)
    size: int  # bytes of its files
    last_use: float  # seconds since the epoch
    last_restore: float | None  # None: never restored
    key: str = ""  # read from its metadata for the entries a plan names

    def named(self, root: Path) -> Entry:
        try:
            key = json.loads((root / "entries" / self.dirname / META).read_bytes()).get("key")
        except (OSError, ValueError, AttributeError):
            key = None
        return self._replace(key=key if isinstance(key, str) else self.dirname)


# ---- locks and marks ----------------------------------------------------------------------------

def lock_path(root: Path, dirname: str) -> Path:
    """The lock file of one entry (the same file `CacheStore` locks with `filelock`: both are flock)."""
    locks = root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return locks / f"{dirname}.lock"


@contextlib.contextmanager
def reading(root: Path, dirname: str) -> Iterator[None]:
    """Hold an entry's lock shared: saves' commits and evictions wait or pass it by meanwhile.
    Nothing is made for a key that has no entry (a miss leaves no lock file behind), and a store
    this process may not write is read without the lock (nobody who shares it with us can evict
    either, unless they own it)."""
    fd = -1
    if os.path.isdir(root / "entries" / dirname):
        with contextlib.suppress(OSError):
            fd = os.open(lock_path(root, dirname), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # closing releases the flock


def touch_used(entry_dir: Path) -> None:
    """Record a restore (the mtime of `used`). A store that cannot be written only loses the mark."""
    with contextlib.suppress(OSError):
        fd = os.open(entry_dir / USED, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            os.utime(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _try_exclusive(root: Path, dirname: str) -> Iterator[bool]:
    fd = os.open(lock_path(root, dirname), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# ---- the store as eviction sees it ----------------------------------------------------------------

def entries(root: Path) -> list[Entry]:
    """Every entry folder with its size and last use (links among them are not entries)."""
    out: list[Entry] = []
    try:
        listing = list(os.scandir(root / "entries"))
    except OSError:
        return out
    for d in listing:
        if d.is_dir(follow_symlinks=False):
            entry = _entry(d.path, d.name)
            if entry is not None:
                out.append(entry)
    return out


def _entry(path: str, dirname: str) -> Entry | None:
    size, saved, used = 0, None, None
    try:
        with os.scandir(path) as files:
            for f in files:
                try:
                    st = f.stat(follow_symlinks=False)
                except OSError:
                    continue
                size += st.st_size
                if f.name == META:
                    saved = st.st_mtime
                elif f.name == USED:
                    used = st.st_mtime
    except OSError:
        return None
    if saved is None:  # no metadata: half made or half removed; not an entry
        return None
    return Entry(dirname, size, max(saved, used or 0.0), used)


def store_size(root: Path) -> int:
    return sum(e.size for e in entries(root))


def _candidates(found: list[Entry], quarantined_dirs: set[str]) -> list[Entry]:
    """Entries that may be evicted, least recently used first."""
    return sorted((e for e in found if e.dirname not in quarantined_dirs), key=lambda e: (e.last_use, e.dirname))


def plan(root: Path, max_size: int, quarantined_dirs: set[str]) -> tuple[list[Entry], int]:
    """(the entries eviction would remove now, least recently used first; the store's size)."""
    found = entries(root)
    total = sum(e.size for e in found)
    doomed: list[Entry] = []
    excess = total - max_size
    for entry in _candidates(found, quarantined_dirs):
        if excess <= 0:
            break
        doomed.append(entry.named(root))
        excess -= entry.size
    return doomed, total


def evict(root: Path, max_size: int, quarantined_dirs: set[str]) -> tuple[list[Entry], int]:
    """Evict until the store fits `max_size` (or nothing more may go): an entry in use is passed
    over for the next least recently used. Returns (what went, the store's size after). Cheap
    when the store fits: one listing, no metadata read."""
    total = store_size(root)
    if total <= max_size:
        return [], total
    gone: list[Entry] = []
    with serialized(root):
        found = entries(root)  # again, under the lock: another run may have evicted meanwhile
        total = sum(e.size for e in found)
        for entry in _candidates(found, quarantined_dirs):
            if total <= max_size:
                break
            entry = entry.named(root)
            if remove_entry(root, entry.dirname):
                gone.append(entry)
                total -= entry.size
    return gone, total


@contextlib.contextmanager
def serialized(root: Path) -> Iterator[None]:
    fd = os.open(lock_path(root, EVICT_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_entry(root: Path, dirname: str) -> bool:
    """Remove one entry if nobody holds its lock; False when it is in use (or already gone)."""
    entry_dir = root / "entries" / dirname
    with _try_exclusive(root, dirname) as mine:
        if not mine or not (entry_dir / META).exists():
            return False
        (entry_dir / META).unlink()  # the commit point first: from now on the entry is a miss
        with os.scandir(entry_dir) as files:
            names = [f.name for f in files]
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry_dir / name)
        with contextlib.suppress(OSError):  # a save that waited on our lock may be filling it again
            entry_dir.rmdir()
    return True
