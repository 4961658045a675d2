"""`loom cache list | clear [KEY] | quarantine | release KEY`. Runs in the `loom` process.

Listings are data and go to stdout as aligned text; confirmations and "nothing here" go to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from loomrun.cache import CacheStore, cache_root
from loomrun.errors import LoomError
from loomrun.repo import discover_repo_root


def _store() -> CacheStore:
    from loomrun.supervisor.abandoned import reap_with_oneshot_writer

    root = discover_repo_root()
    reap_with_oneshot_writer(root / ".loom" / ".runtime")  # spec §5.5: the next loom command reaps
    return CacheStore(cache_root(root))


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _table(header: Sequence[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [list(header), *rows]]
    return "\n".join(lines)


def list_entries() -> int:
    """Every entry with its size on disk (what `runtime.cache.maxSize` bounds), the size of what it
    holds, and its last use (the last restore; `never` when it was only saved)."""
    from loomrun.cache import evict
    from loomrun.cache.store import key_dirname

    store = _store()
    entries = store.list()
    if not entries:
        print("no cache entries", file=sys.stderr)
        return 0
    usage = {e.dirname: e for e in evict.entries(store.root)}
    quarantined = store.quarantined_dirs()
    rows = []
    for m in entries:
        use = usage.get(key_dirname(str(m["key"])))
        rows.append([
            str(m["key"]),
            human_size(use.size) if use else "?",
            human_size(int(m.get("total_size", 0))),
            str(m.get("file_count", "")),
            str(m.get("created_at", "")),
            _when(use.last_restore) if use and use.last_restore else "never",
            str(m.get("source_run", "")),
            "quarantined" if key_dirname(str(m["key"])) in quarantined else "",
        ])
    print(_table(["KEY", "SIZE", "CONTENT", "FILES", "CREATED", "LAST USED", "SOURCE RUN", "STATE"], rows))
    total = sum(e.size for e in usage.values())
    print(f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}, {human_size(total)} on disk", file=sys.stderr)
    return 0


def _when(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clear(key: str | None) -> int:
    store = _store()
    if key is not None and not store.exists(key):
        raise LoomError(f'no cache entry with key "{key}"')
    removed = store.clear(key)
    noun = "entry" if removed == 1 else "entries"
    print(f"removed {removed} cache {noun}", file=sys.stderr)
    return 0


def quarantine() -> int:
    records = _store().quarantine.list()
    if not records:
        print("no quarantined keys", file=sys.stderr)
        return 0
    for record in records:
        print(f"{record.get('key')}")
        print(f"  quarantined at: {record.get('quarantined_at')}")
        print(f"  reason: {record.get('reason')}")
        print(f"  runs: cache off {record.get('run_off')}, cache on {record.get('run_on')}")
        for diff in record.get("differences", []):
            print(f"  {diff.get('path')}: off {diff.get('off')} / on {diff.get('on')}")
    return 0


def release(key: str) -> int:
    if not _store().quarantine.release(key):
        raise LoomError(f'key "{key}" is not quarantined')
    print(f'released "{key}"; it can be restored again', file=sys.stderr)
    return 0
