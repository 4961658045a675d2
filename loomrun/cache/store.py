"""The cache store in `.loom/.runtime/cache/` (spec §6.3). Runs in the worker process (restore, save),
and in `loom cache` (list, clear).

Layout::

    cache/entries/<key dir>/meta.json        the commit point: names the live archive
    cache/entries/<key dir>/<uuid>.tar.zst   zstandard-compressed PAX tar
    cache/locks/<key dir>.lock               one FileLock per key
    cache/tmp/                               archives being written
    cache/quarantine.json                    see quarantine.py

A save writes its archive in `tmp/` without any lock (two saves of one key compress in parallel),
then, under the key's lock, renames it into the key dir, atomically replaces `meta.json`, and
deletes the archive the old metadata named. A reader opens the archive `meta.json` names; if a
concurrent save deleted it in between, it reads `meta.json` again. So concurrent saves of one key
leave exactly one complete entry (the last to commit) and readers never see half of one.

Keys never become paths as written: `key_dirname` percent-encodes every byte outside
`[A-Za-z0-9_.-]` (and a leading `.`), which is injective, so `a/b`, `..` or `../../etc` are plain
names. Over-long names keep a readable head plus the key's sha256. `meta.json` records the real key
and is checked on every lookup. A key concealed because it held a secret value (`keys.conceal`) is
stored in `%secret-<sha256 of the key>`: a digest, never a value (`%` followed by a non-hex letter
is not something the encoding makes, so it cannot collide with another key's folder). The HMAC key
of `keys.conceal` is `cache/secret-digest.key` (32 random bytes, 0600, made once per store).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from loomrun.cache import evict, pack, unpack
from loomrun.cache.atomic import read_json, write_json
from loomrun.cache.keys import SECRET_MARK
from loomrun.cache.quarantine import Quarantine
from loomrun.errors import LoomError
from loomrun.oserror import describe

SCHEMA = "loom.cache.entry.v1"
META = "meta.json"
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_MAX_NAME = 180
_STAGED = re.compile(r"\.loom-cache-restore-[^/]*/")  # unpack()'s staging folder, gone by the time we say so


def key_dirname(key: str) -> str:
    """A file-name-safe, injective encoding of `key`."""
    if SECRET_MARK in key:
        return f"%secret-{hashlib.sha256(key.encode()).hexdigest()}"
    name = "".join(ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in key)
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:
        name = f"{name[:120]}~{hashlib.sha256(key.encode()).hexdigest()}"
    return name


def _read_meta(entry_dir: Path) -> Any:
    """The parsed metadata, or None (missing, unreadable, or a link: never followed out of the store)."""
    if entry_dir.is_symlink():
        return None
    try:
        return read_json(entry_dir / META)
    except (ValueError, OSError):
        return None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SaveResult:
    key: str
    files: int  # regular files, symlinks and directories archived
    total_size: int  # bytes of regular-file content
    archive_size: int  # bytes on disk, compressed
    duration_s: float
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "warnings": list(self.warnings)}


@dataclass(frozen=True)
class RestoreResult:
    status: str  # "hit" (the primary key) | "fallback_hit" | "miss"
    key: str | None  # the key restored
    fallback_index: int | None  # 0-based position among the fallback keys, for a fallback hit
    tried: tuple[str, ...]
    quarantined: tuple[str, ...]  # keys skipped because they are quarantined
    refused: tuple[str, ...]  # "<key>: <why>" for entries that were corrupt or unsafe
    files: int
    total_size: int
    archive_size: int
    duration_s: float

    @property
    def hit(self) -> bool:
        return self.key is not None

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for name in ("tried", "quarantined", "refused"):
            doc[name] = list(doc[name])
        return doc


class CacheStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.quarantine = Quarantine(root)

    # ---- paths -------------------------------------------------------------------------------

    def _entry_dir(self, key: str) -> Path:
        return self.root / "entries" / key_dirname(key)

    def _lock(self, key: str) -> FileLock:
        return FileLock(str(self._lock_path(key_dirname(key))))

    def _lock_path(self, dirname: str) -> Path:
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return locks / f"{dirname}.lock"

    @property
    def pepper(self) -> bytes:
        """The store's key for `keys.conceal`, made on first use (two makers race: one link wins)."""
        path = self.root / "secret-digest.key"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".secret-digest.{os.getpid()}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_bytes()

    # ---- queries -----------------------------------------------------------------------------

    def entry(self, key: str) -> dict[str, Any] | None:
        """The metadata of `key`'s entry, or None (also for unreadable metadata: a miss, never a crash)."""
        meta = _read_meta(self._entry_dir(key))
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        return meta

    def list(self) -> list[dict[str, Any]]:
        """Metadata of every entry, sorted by key."""
        entries = self.root / "entries"
        if not entries.is_dir():
            return []
        metas = [_read_meta(d) for d in entries.iterdir() if not d.is_symlink() and d.is_dir()]
        return sorted((m for m in metas if isinstance(m, dict) and "key" in m), key=lambda m: str(m["key"]))

    # ---- save --------------------------------------------------------------------------------

    def save(self, key: str, workspace: Path, paths: Sequence[str], *, source_run: str) -> SaveResult:
        """Archive the matched paths under `key`, replacing any earlier entry atomically."""
        started = time.monotonic()
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        archive_name = f"{uuid.uuid4().hex}.tar.zst"
        tmp = tmp_dir / f"{os.getpid()}-{archive_name}"
        try:
            # No fsync (it doubled the save time on this disk): renames keep entries atomic for
            # concurrent readers, and after a crash a torn archive fails zstd's frame checksum and
            # torn metadata fails to parse; both are a miss, never a wrong restore.
            with open(tmp, "xb") as fh:
                stats = pack.pack(fh, workspace, paths)
            archive_size = tmp.stat().st_size
            meta = {
                "schema": SCHEMA,
                "key": key,
                "archive": archive_name,
                "created_at": _now(),
                "source_run": source_run,
                "paths": list(paths),
                "file_count": len(stats.files),
                "total_size": stats.total_size,
                "archive_size": archive_size,
                "compression": {"codec": "zstd", "level": pack.LEVEL},
                "files": stats.files,
            }
            self._commit(key, tmp, archive_name, meta)
        finally:
            tmp.unlink(missing_ok=True)
        if not stats.files:
            stats.warnings.append(f"cache save: no file matched {', '.join(paths)}; saved an empty entry")
        else:
            stats.warnings.extend(f'cache save: path "{p}" matched nothing' for p in stats.unmatched)
        return SaveResult(
            key=key,
            files=len(stats.files),
            total_size=stats.total_size,
            archive_size=archive_size,
            duration_s=time.monotonic() - started,
            warnings=tuple(stats.warnings),
        )

    def _commit(self, key: str, tmp: Path, archive_name: str, meta: dict[str, Any]) -> None:
        entry_dir = self._entry_dir(key)
        with self._lock(key):
            entry_dir.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, entry_dir / archive_name)
            write_json(entry_dir / META, meta, compact=True, durable=False)
            for stale in entry_dir.glob("*.tar.zst"):
                if stale.name != archive_name:
                    stale.unlink(missing_ok=True)

    # ---- restore -----------------------------------------------------------------------------

    def _open_archive(self, key: str) -> tuple[dict[str, Any], IO[bytes]] | None:
        """(metadata, open archive file), or None when there is no entry; `CacheEntryError` for an
        entry that cannot be used (unreadable metadata, a link in the store, a bad archive name)."""
        entry_dir = self._entry_dir(key)
        if entry_dir.is_symlink():
            raise unpack.CacheEntryError("the entry is a symlink (not followed out of the store)")
        for _ in range(5):
            try:
                meta = read_json(entry_dir / META)
            except (ValueError, OSError) as exc:
                raise unpack.CacheEntryError(f"its metadata is unreadable ({describe(exc, self.root)})") from exc
            if meta is None:
                return None
            if not isinstance(meta, dict) or meta.get("key") != key:
                raise unpack.CacheEntryError("its metadata does not describe this key")
            name = str(meta.get("archive", ""))
            if not name or "/" in name or name.startswith("."):
                raise unpack.CacheEntryError(f"metadata names a bad archive {name!r}")
            try:
                return meta, open(os.path.join(entry_dir, name), "rb")  # the caller closes it
            except FileNotFoundError:
                continue  # a concurrent save replaced the entry between our two reads
        return None

    def restore(self, keys: Sequence[str], workspace: Path) -> RestoreResult:
        """Restore the first usable key of `keys` (primary, then fallbacks) into `workspace`."""
        started = time.monotonic()
        tried: list[str] = []
        quarantined: list[str] = []
        refused: list[str] = []
        for index, key in enumerate(keys):
            tried.append(key)
            if self.quarantine.is_quarantined(key):
                quarantined.append(key)
                continue
            try:
                with evict.reading(self.root, key_dirname(key)):  # never evicted while it is restored
                    opened = self._open_archive(key)
                    if opened is None:
                        continue
                    meta, fh = opened
                    with fh:
                        stats = unpack.unpack(fh, workspace)
                    evict.touch_used(self._entry_dir(key))
            except unpack.CacheEntryError as exc:
                refused.append(f"{key}: {exc}")
                continue
            except OSError as exc:  # a member the file system refuses (a name over 255 bytes), a full disk
                refused.append(f"{key}: cannot be unpacked ({_STAGED.sub('', describe(exc, workspace))})")
                continue
            return RestoreResult(
                status="hit" if index == 0 else "fallback_hit",
                key=key,
                fallback_index=None if index == 0 else index - 1,
                tried=tuple(tried),
                quarantined=tuple(quarantined),
                refused=tuple(refused),
                files=stats.files,
                total_size=stats.total_size,
                archive_size=int(meta.get("archive_size", 0)),
                duration_s=time.monotonic() - started,
            )
        return RestoreResult(
            status="miss", key=None, fallback_index=None, tried=tuple(tried), quarantined=tuple(quarantined),
            refused=tuple(refused), files=0, total_size=0, archive_size=0,
            duration_s=time.monotonic() - started,
        )

    # ---- size bound (spec §13) -----------------------------------------------------------------

    def bound(self, max_size: int) -> tuple[Sequence[evict.Entry], int]:
        """Evict the least recently used entries until the store fits `max_size` (see evict.py):
        (what went, the store's size after)."""
        return evict.evict(self.root, max_size, self.quarantined_dirs())

    def quarantined_dirs(self) -> set[str]:
        return {key_dirname(str(record.get("key"))) for record in self.quarantine.list()}

    # ---- clear -------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Something is stored under `key` (an entry, even an unreadable one, or a link)."""
        return os.path.lexists(self._entry_dir(key))

    def clear(self, key: str | None = None) -> int:
        """Remove one entry (or all, and any half-written leftovers); the number of entries removed.
        A link among the entries is removed, never followed. Everything that can be removed is,
        then the first failure (if any) is raised as `LoomError`. The quarantine list is left alone."""
        entries = self.root / "entries"
        if key is not None:
            dirs = [self._entry_dir(key)] if self.exists(key) else []
        else:
            dirs = sorted(entries.iterdir()) if entries.is_dir() else []
        removed, failures = 0, []
        for d in dirs:
            counts = d.is_symlink() or isinstance(_read_meta(d), dict)  # an orphan is not an entry
            try:
                self._remove_entry(d)
            except OSError as exc:
                failures.append(f"{d.name}: {describe(exc, self.root)}")
                continue
            removed += counts
        if key is None:
            self._remove_orphans()
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise LoomError(f"removed {removed}, but could not remove {failures[0]}{more}")
        return removed

    def _remove_entry(self, entry_dir: Path) -> None:
        if entry_dir.is_symlink() or not entry_dir.is_dir():
            entry_dir.unlink()
            return
        with FileLock(str(self._lock_path(entry_dir.name))):
            shutil.rmtree(entry_dir)

    def _remove_orphans(self) -> None:
        """Archives of saves whose process is gone (entry folders without metadata went with clear)."""
        tmp = self.root / "tmp"
        if tmp.is_dir():
            for f in tmp.iterdir():
                pid = f.name.split("-", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    f.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
