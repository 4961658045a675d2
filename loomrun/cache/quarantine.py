"""The quarantine list, `.loom/.runtime/cache/quarantine.json` (spec §6.4).

Runs in the supervisor (adds after `--cache-diff`), the worker (checks before a restore) and
`loom cache` (lists, releases). Every read-modify-write happens under a `FileLock` next to the file
and ends in an atomic rename, so two processes never lose each other's entries.

Document: `{"schema": "loom.cache.quarantine.v1", "keys": {KEY: {"key", "reason", "quarantined_at",
"run_off", "run_on", "differences": [{"path", "off", "on"}]}}}`. Quarantining a key again replaces
its evidence with the newest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from loomrun.cache.atomic import read_json, write_json
from loomrun.errors import LoomError

SCHEMA = "loom.cache.quarantine.v1"
FILE_NAME = "quarantine.json"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Quarantine:
    def __init__(self, cache_root: Path) -> None:
        self.path = cache_root / FILE_NAME
        self._lock = FileLock(str(cache_root / f"{FILE_NAME}.lock"))

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            doc = read_json(self.path)
        except ValueError as exc:
            # Never guess: an unreadable list could hide a poisoned key. Fail loudly instead.
            raise LoomError(f"{self.path} is not valid JSON ({exc}); fix or delete it") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict):
            return {}
        return dict(doc["keys"])

    def _store(self, keys: dict[str, dict[str, Any]]) -> None:
        write_json(self.path, {"schema": SCHEMA, "keys": keys})

    def add(
        self,
        key: str,
        reason: str,
        run_off: str,
        run_on: str,
        differences: Sequence[dict[str, Any]],
    ) -> dict[str, Any]:
        record = {
            "key": key,
            "reason": reason,
            "quarantined_at": _now(),
            "run_off": run_off,
            "run_on": run_on,
            "differences": [dict(d) for d in differences],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            keys = self._load()
            keys[key] = record
            self._store(keys)
        return record

    def is_quarantined(self, key: str) -> bool:
        # A lock-free read is enough: the file is only ever replaced whole.
        return key in self._load()

    def get(self, key: str) -> dict[str, Any] | None:
        return self._load().get(key)

    def release(self, key: str) -> bool:
        """Remove `key`; False when it was not quarantined."""
        if not self.path.exists():
            return False
        with self._lock:
            keys = self._load()
            if key not in keys:
                return False
            del keys[key]
            self._store(keys)
        return True

    def list(self) -> list[dict[str, Any]]:
        """Every quarantined record, oldest first."""
        return sorted(self._load().values(), key=lambda r: (str(r.get("quarantined_at")), str(r.get("key"))))
