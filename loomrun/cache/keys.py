"""Cache keys (spec §6.2). PURE: reads workspace files for `{prefix, files}` keys, writes nothing.

Runs in the worker process (cache_restore / cache_save phases). The job a worker receives has its
keys already expanded by the supervisor (`loomrun.supervisor.env`: variables, and in `{template}`
keys and fallback keys `$job_name`, `$job_id`, `$run_id`, `$pipeline_id`, `$head_sha`), so nothing
here expands again: a `$` left in a key is the user's (`$$`, or a name no variable has).

Decisions where the spec is silent:
* Files-key digest framing, for each matched path in sorted order (Python code-point order of the
  workspace-relative POSIX path), exactly these bytes are hashed::

      <path utf-8> NUL <decimal content length, ASCII> NUL <content>

  The second NUL keeps the length and the content apart (`1` + `23…` vs `12` + `3…`). A path that
  is not valid UTF-8 on disk is hashed as its bytes there. A matched
  symlink is hashed by what it points at when that is a regular file, else skipped with a warning.
  The key is `<prefix>-<hex digest>` (just the digest when the prefix is empty).
* Keys are free text with no control characters and are not empty. They never become paths as
  written: the store encodes them (see `store.key_dirname`), so `/`, `..` and the like are harmless.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from loomrun.globs import match_paths
from loomrun.workflow.model import CacheSpec, KeyFiles, KeyPrefix, KeyTemplate

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CHUNK = 1 << 20


class CacheKeyError(ValueError):
    """A key that cannot be used (empty, control characters, bad `files` glob)."""


def check_key(key: str) -> str:
    """Return the key stripped of surrounding blanks, or raise `CacheKeyError`."""
    key = key.strip()
    if not key:
        raise CacheKeyError("cache key is empty")
    if _CONTROL.search(key):
        raise CacheKeyError(f"cache key {key!r} contains control characters")
    return key


def files_digest(workspace: Path, patterns: Sequence[str]) -> tuple[str, list[str]]:
    """sha256 hex over the files matched by `patterns` (framing in the module docstring)."""
    unmatched: list[str] = []
    try:
        paths = match_paths(workspace, patterns, unmatched=unmatched)
    except ValueError as exc:
        raise CacheKeyError(f"cache key files: {exc}") from exc
    warnings: list[str] = []
    digest = hashlib.sha256()
    hashed = 0
    for rel in paths:
        full = workspace / rel
        try:
            fd = os.open(full, os.O_RDONLY)
        except OSError as exc:
            warnings.append(f"cache key files: {rel} could not be read ({exc.strerror}); skipped")
            continue
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                warnings.append(f"cache key files: {rel} is not a regular file; skipped")
                continue
            digest.update(os.fsencode(rel) + b"\0" + str(st.st_size).encode() + b"\0")
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        hashed += 1
    if hashed == 0:
        warnings.append(
            f"cache key files: no file matched {', '.join(patterns)}; using the digest of nothing"
        )
    else:
        warnings.extend(f'cache key files: "{p}" matched nothing' for p in unmatched)
    return digest.hexdigest(), warnings


def compute_key(spec: CacheSpec, *, job_name: str, workspace: Path) -> tuple[str, list[str]]:
    """(key, warnings) for one cache of one job. Raises `CacheKeyError` for an unusable key."""
    warnings: list[str] = []
    key = spec.key
    if key is None:
        result = f"{job_name}-{spec.name or 'default'}"
    elif isinstance(key, str):
        result = key
    elif isinstance(key, KeyFiles):
        digest, warnings = files_digest(workspace, key.files)
        result = f"{key.prefix}-{digest}" if key.prefix else digest
    elif isinstance(key, KeyPrefix):
        result = key.prefix
    elif isinstance(key, KeyTemplate):
        result = key.template
    else:  # pragma: no cover - the model's union is closed
        raise CacheKeyError(f"unknown cache key form {key!r}")
    return check_key(result), warnings


def fallback_keys(spec: CacheSpec, *, primary: str) -> tuple[list[str], list[str]]:
    """(fallback keys, warnings): in order, without the primary key, duplicates or keys that are
    empty (those are dropped with a warning)."""
    warnings: list[str] = []
    seen = {primary}
    out: list[str] = []
    for raw in spec.fallback_keys:
        try:
            key = check_key(raw)
        except CacheKeyError as exc:
            warnings.append(f"fallback key {raw!r} dropped: {exc}")
            continue
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out, warnings
