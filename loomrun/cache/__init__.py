"""The cache: keys, the zstd store, quarantine and the `--cache-diff` comparison (spec §6).

Used by worker processes (cache_restore / cache_save), the supervisor (`--cache-diff`) and
`loom cache`. Import the submodules directly; this package re-exports the main names.
"""

from __future__ import annotations

from pathlib import Path

from loomrun.cache.compare import JobOutcome, compare_passes, diff_fingerprints, fingerprint
from loomrun.cache.keys import CacheKeyError, compute_key, fallback_keys
from loomrun.cache.policy import restores, saves
from loomrun.cache.quarantine import Quarantine
from loomrun.cache.store import CacheStore, RestoreResult, SaveResult
from loomrun.cache.unpack import CacheEntryError, UnsafeArchiveError


def cache_root(repo_root: Path) -> Path:
    """`.loom/.runtime/cache/` of a repo."""
    return repo_root / ".loom" / ".runtime" / "cache"


__all__ = [
    "CacheEntryError",
    "CacheKeyError",
    "CacheStore",
    "JobOutcome",
    "Quarantine",
    "RestoreResult",
    "SaveResult",
    "UnsafeArchiveError",
    "cache_root",
    "compare_passes",
    "compute_key",
    "diff_fingerprints",
    "fallback_keys",
    "fingerprint",
    "restores",
    "saves",
]
