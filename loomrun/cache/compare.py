"""`--cache-diff` comparison (spec §6.4): fingerprints of job outputs and the verdict of two passes.

`fingerprint` runs where the workspace is readable after a job (the worker, or the supervisor for a
host workspace); `compare_passes` runs in the supervisor once both passes are done, and is the only
caller of `Quarantine.add` there.

Fingerprint values (decision): a regular file is `sha256:<hex>`, with `+x` appended when the owner
executable bit is set; a symlink is `symlink:<target text>` (never followed). Mtimes, owners and
other mode bits do not count.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loomrun.cache.quarantine import Quarantine
from loomrun.globs import match_paths

_CHUNK = 1 << 20


def _file_value(full: str) -> str | None:
    st = os.lstat(full)
    if stat.S_ISLNK(st.st_mode):
        return f"symlink:{os.readlink(full)}"
    if not stat.S_ISREG(st.st_mode):
        return None
    sha = hashlib.sha256()
    with open(os.open(full, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}" + ("+x" if st.st_mode & stat.S_IXUSR else "")


def fingerprint(workspace: Path, patterns: Sequence[str], exclude: Sequence[str] = ()) -> dict[str, str]:
    """Relative path -> content fingerprint of every file and symlink matched by `patterns`."""
    out: dict[str, str] = {}
    for rel in match_paths(workspace, patterns, exclude):
        try:
            value = _file_value(os.path.join(workspace, rel))
        except FileNotFoundError:
            continue  # removed while we walked; it is simply not an output
        if value is not None:
            out[rel] = value
    return out


def diff_fingerprints(off: Mapping[str, str], on: Mapping[str, str]) -> list[dict[str, Any]]:
    """`[{"path", "off", "on"}]` for every path whose value differs; a missing side is None."""
    return [
        {"path": path, "off": off.get(path), "on": on.get(path)}
        for path in sorted(set(off) | set(on))
        if off.get(path) != on.get(path)
    ]


@dataclass(frozen=True)
class JobOutcome:
    """The mechanical result of one job in one pass."""

    status: str | None  # success | failed | skipped | canceled; None when the job did not run
    exit_code: int | None
    fingerprint: Mapping[str, str] = field(default_factory=dict)
    cache_hit_keys: tuple[str, ...] = ()


_NOT_RUN = JobOutcome(status=None, exit_code=None)


def _reason(job_id: str, off: JobOutcome, on: JobOutcome, differences: list[dict[str, Any]]) -> str:
    parts = []
    if off.status != on.status:
        parts.append(f"status {off.status} (cache off) vs {on.status} (cache on)")
    if off.exit_code != on.exit_code:
        parts.append(f"exit code {off.exit_code} vs {on.exit_code}")
    if differences:
        parts.append(f"{len(differences)} output file(s) differ")
    return f'job "{job_id}" diverged with the cache on: ' + "; ".join(parts)


def compare_job(job_id: str, off: JobOutcome, on: JobOutcome) -> dict[str, Any]:
    """One `cache_diff.jobs` item (without quarantining anything)."""
    differences = diff_fingerprints(off.fingerprint, on.fingerprint)
    diverged = off.status != on.status or off.exit_code != on.exit_code or bool(differences)
    item: dict[str, Any] = {
        "id": job_id,
        "cache_hits": list(on.cache_hit_keys),
        "diverged": diverged,
        "differences": differences,
        "nondeterministic": diverged and not on.cache_hit_keys,
    }
    if off.status != on.status:
        item["status"] = {"off": off.status, "on": on.status}
    if off.exit_code != on.exit_code:
        item["exit_code"] = {"off": off.exit_code, "on": on.exit_code}
    return item


def compare_passes(
    off: Mapping[str, JobOutcome],
    on: Mapping[str, JobOutcome],
    *,
    run_off: str,
    run_on: str,
    quarantine: Quarantine | None,
    passes: Sequence[Mapping[str, Any]] = (),
    order: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The receipt's `cache_diff` block. Quarantines the pass-2 hit keys of every diverging job
    (when `quarantine` is given); a diverging job without a hit is only reported nondeterministic."""
    job_ids = list(order) if order is not None else list(dict.fromkeys([*off, *on]))
    jobs: list[dict[str, Any]] = []
    quarantined: list[str] = []
    nondeterministic: list[str] = []
    for job_id in job_ids:
        o1, o2 = off.get(job_id, _NOT_RUN), on.get(job_id, _NOT_RUN)
        item = compare_job(job_id, o1, o2)
        jobs.append(item)
        if item["nondeterministic"]:
            nondeterministic.append(job_id)
        if not item["diverged"]:
            continue
        for key in o2.cache_hit_keys:
            if quarantine is not None:
                quarantine.add(key, _reason(job_id, o1, o2, item["differences"]), run_off, run_on,
                               item["differences"])
            if key not in quarantined:
                quarantined.append(key)
    block: dict[str, Any] = {}
    if passes:
        block["passes"] = [dict(p) for p in passes]
    block.update({"jobs": jobs, "quarantined": quarantined, "nondeterministic": nondeterministic})
    return block


def cache_diff_failed(block: Mapping[str, Any]) -> bool:
    """Exit 1 when anything was quarantined or either pass failed (spec §6.4)."""
    passes = block.get("passes", [])
    return bool(block.get("quarantined")) or any(p.get("status") != "success" for p in passes)
