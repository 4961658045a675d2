"""`loom gc [--dry-run]`: apply retention and the cache size bound now (spec §13). Runs in the
`loom` process; what goes under `logs/` and `receipts/` is removed by a one-shot writer process.

One plan serves both forms (`writer.retention.plan`, `cache.evict.plan`): `--dry-run` prints it,
a real run removes exactly it and prints what went (a run that became alive meanwhile, or a cache
entry being restored or saved, is passed over and not counted). One line per item on stdout,
oldest first; the total on stderr. A dry run changes nothing, not even marking abandoned runs (a
real run marks them first, as every `loom` command does; their files are planned alike).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from loomrun.cache import CacheStore, cache_root, evict
from loomrun.commands.cache import human_size
from loomrun.config import load_runtime_config
from loomrun.errors import LoomError
from loomrun.repo import discover_repo_root
from loomrun.writer import retention

_MAX_REPORTED = 100  # failures the writer child reports back (the rest are counted)
_NOUNS = {"run": ("run", "runs"), "snapshot": ("snapshot", "snapshots"),
          "staging": ("staging folder", "staging folders"), "check receipt": ("check receipt", "check receipts"),
          "cache entry": ("cache entry", "cache entries")}


def main(dry_run: bool) -> int:
    root = discover_repo_root()
    runtime = root / ".loom" / ".runtime"
    cfg = load_runtime_config(root)
    if not dry_run:
        from loomrun.supervisor.abandoned import reap_with_oneshot_writer

        reap_with_oneshot_writer(runtime)
    doomed = retention.plan(runtime, cfg.retention_runs, cfg.retention_max_age_s)
    seen: set[tuple[int, int]] = set()
    sizes = [sum(retention.disk_usage(p, seen) for p in item.paths) for item in doomed]
    store = CacheStore(cache_root(root))
    quarantined = store.quarantined_dirs() if store.root.is_dir() else set()
    evictions, _ = evict.plan(store.root, cfg.cache_max_size_bytes, quarantined)
    failures: list[tuple[str, str]] = []
    if not dry_run:
        passed, failures = _remove(runtime, doomed)
        skip = {id(item) for item in passed} | {id(i) for i in doomed if {p for p, _ in failures} & set(i.paths)}
        kept = [(item, size) for item, size in zip(doomed, sizes, strict=True) if id(item) not in skip]
        evictions = _evict(store.root, evictions)
    else:
        kept = list(zip(doomed, sizes, strict=True))
    _report(dry_run, kept, evictions)
    if failures:
        path, why = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise LoomError(f"could not remove {path}: {why}{more}")
    return 0


def _remove(runtime: Path, doomed: list[retention.Doomed]) -> tuple[list[retention.Doomed], list[tuple[str, str]]]:
    """The removal, in a writer process; what it passed over and what failed come back on a pipe."""
    from loomrun.writer.oneshot import run_in_writer

    if not doomed:
        return [], []
    read_fd, write_fd = os.pipe()

    def remove() -> None:
        passed, failures = retention.remove(runtime, doomed)
        lines = [f"passed\0{item.name}" for item in passed]
        lines += [f"failed\0{path}\0{why}" for path, why in failures[:_MAX_REPORTED]]
        os.write(write_fd, "\n".join(lines).encode()[:60_000])  # under a pipe's buffer: never blocks

    try:
        run_in_writer(remove, runtime / "receipts")
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        report = fh.read().decode(errors="replace")
    names = {line.split("\0")[1] for line in report.splitlines() if line.startswith("passed\0")}
    failed = [tuple(line.split("\0")[1:3]) for line in report.splitlines() if line.startswith("failed\0")]
    return [item for item in doomed if item.name in names], [(p, w) for p, w in failed]


def _evict(root: Path, planned: Sequence[evict.Entry]) -> list[evict.Entry]:
    if not planned:
        return []
    with evict.serialized(root):
        return [entry for entry in planned if evict.remove_entry(root, entry.dirname)]


def _describe(item: retention.Doomed) -> str:
    if item.kind == "run":
        parts = {"receipts": "receipt", "logs": "logs", "workspaces": "snapshot", "tmp": "staging"}
        return f"run {item.name} ({', '.join(parts[Path(p).parent.name] for p in item.paths)})"
    if item.kind == "snapshot":
        return f"snapshot of {item.name}"
    if item.kind == "staging":
        return f"staging of {item.name}"
    return f"check receipt {item.name}"


def _report(dry_run: bool, kept: list[tuple[retention.Doomed, int]], evictions: Sequence[evict.Entry]) -> None:
    verb, evict_verb = ("would remove", "would evict") if dry_run else ("removed", "evicted")
    for item, size in kept:
        print(f"{verb} {_describe(item)}: {human_size(size)}")
    for entry in evictions:
        print(f"{evict_verb} cache entry {entry.key}: {human_size(entry.size)}")
    if not kept and not evictions:
        print("nothing to remove", file=sys.stderr)
        return
    counts = dict.fromkeys(_NOUNS, 0)
    for item, _ in kept:
        counts[item.kind] += 1
    counts["cache entry"] = len(evictions)
    what = ", ".join(f"{n} {_NOUNS[kind][n != 1]}" for kind, n in counts.items() if n)
    freed = sum(size for _, size in kept) + sum(e.size for e in evictions)
    print(f"{'would free' if dry_run else 'freed'} {human_size(freed)} ({freed} bytes): {what}", file=sys.stderr)
