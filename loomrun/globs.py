"""Workspace-relative glob matching for artifacts and cache paths. PURE (reads the tree, writes nothing).

Used in worker processes (artifact extraction, cache save) and by the cache-diff comparison.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath


def check_pattern(pattern: str) -> str:
    """Reject patterns that could reach outside the workspace; return the normalised pattern."""
    if not pattern or pattern.startswith("/") or os.path.isabs(pattern):
        raise ValueError(f"path {pattern!r} must be relative to the workspace")
    parts = PurePosixPath(pattern).parts
    if ".." in parts:
        raise ValueError(f"path {pattern!r} must not contain '..'")
    return pattern.rstrip("/") or "."


def _walk(root: Path, rel: str) -> Iterable[str]:
    full = root / rel
    if full.is_symlink() or not full.is_dir():
        yield rel
        return
    for dirpath, dirnames, filenames in os.walk(full):
        base = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            yield f"{base}/{name}" if base != "." else name
        for name in list(dirnames):
            if (Path(dirpath) / name).is_symlink():
                dirnames.remove(name)  # a symlinked dir is kept as a link, not followed
                yield f"{base}/{name}" if base != "." else name


def _expand(root: Path, patterns: Sequence[str]) -> set[str]:
    found: set[str] = set()
    real_root = os.path.realpath(root)
    for pattern in patterns:
        pat = check_pattern(pattern)
        for hit in glob.glob(pat, root_dir=root, recursive=True, include_hidden=True):
            if not os.path.lexists(os.path.join(root, hit)):
                continue  # glob("missing/**") yields "missing/" even when there is no such folder
            parent = os.path.realpath(os.path.dirname(os.path.join(root, hit)))
            if parent != real_root and not parent.startswith(real_root + os.sep):
                continue  # reached through a symlinked directory that leaves the workspace
            found.update(_walk(root, os.path.normpath(hit)))
    return found


def match_paths(root: Path, patterns: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """Sorted workspace-relative POSIX paths of files and symlinks matched by `patterns` minus `exclude`.

    A pattern naming a directory matches everything under it; symlinks are listed, never followed.
    """
    if not patterns:
        return []
    included = _expand(root, patterns)
    if exclude:
        excluded = _expand(root, exclude)
        included -= excluded
        dirs = [e for e in exclude if (root / check_pattern(e)).is_dir()]
        included = {p for p in included if not any(p.startswith(d.rstrip("/") + "/") for d in dirs)}
    return sorted(included)
