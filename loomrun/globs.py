"""Workspace-relative glob matching for artifacts, cache paths, cache key files and the cache-diff
fingerprint. PURE (reads the tree, writes nothing). Runs in worker processes and the supervisor.

Pattern language (the standard library's `glob(recursive=True, include_hidden=True)`, less its
symlink following): `*`, `?` and `[...]` match within one path segment, dot files included; a
segment that is exactly `**` matches zero or more folders.

Walks are linear in the size of the tree, whatever links it holds:
* `**` never descends into a symlinked folder (a `node_modules/self -> ..` is matched as a link,
  not walked), and each (folder, pattern position) is visited once, so `**/x/**/*.txt` does not
  go quadratic either.
* A literal or single-wildcard segment may pass through a symlinked folder (`current/lib.so` with
  `current -> v1`): the pattern's length bounds that. A match whose parent folder then resolves
  outside the workspace is dropped.
* A matched folder stands for everything below it, walked once (a hit below another hit is not
  walked again) and never through a link: a link is listed as a link.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from fnmatch import translate
from pathlib import Path, PurePosixPath

_MAGIC = re.compile(r"[*?[]")

FILES = ""  # `dirs=` of match_paths: files and symlinks only
EMPTY_DIRS = "empty"  # ... plus folders that hold nothing at all
ALL_DIRS = "all"  # ... plus every real folder walked below a matched folder, the folder included


def check_pattern(pattern: str) -> str:
    """Reject patterns that could reach outside the workspace; return the normalised pattern."""
    if not pattern or pattern.startswith("/") or os.path.isabs(pattern):
        raise ValueError(f"path {pattern!r} must be relative to the workspace")
    parts = PurePosixPath(pattern).parts
    if ".." in parts:
        raise ValueError(f"path {pattern!r} must not contain '..'")
    return pattern.rstrip("/") or "."


def _segments(pattern: str) -> list[str]:
    segs: list[str] = []
    for seg in check_pattern(pattern).split("/"):
        if seg in ("", ".") or (seg == "**" and segs and segs[-1] == "**"):
            continue
        segs.append(seg)
    return segs


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _scan(root: str, rel: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            return list(it)
    except OSError:  # gone, not a folder, unreadable: nothing matches below it
        return []


def _is_dir(entry: os.DirEntry[str], follow: bool) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow)
    except OSError:
        return False


def _inside(root_real: str, root: str, rel: str) -> bool:
    parent = os.path.realpath(os.path.dirname(os.path.join(root, rel)))
    return parent == root_real or parent.startswith(root_real + os.sep)


def glob_hits(root: Path, pattern: str) -> set[str]:
    """Workspace-relative paths (files, links or folders) that `pattern` names; "" is the root."""
    segs = _segments(pattern)
    matchers = [None if seg == "**" or not _MAGIC.search(seg) else re.compile(translate(seg)).match
                for seg in segs]
    top = str(root)
    root_real = os.path.realpath(top)
    hits: set[str] = set()
    seen: set[tuple[str, int]] = set()
    stack: list[tuple[str, int, bool]] = [("", 0, False)]  # (folder, segment index, reached via a link)
    while stack:
        rel, i, via_link = stack.pop()
        if (rel, i) in seen:
            continue
        seen.add((rel, i))
        if i == len(segs):
            if not via_link or not rel or _inside(root_real, top, rel):
                hits.add(rel)
            continue
        seg, match, last = segs[i], matchers[i], i + 1 == len(segs)
        if seg == "**":
            stack.append((rel, i + 1, via_link))
            stack.extend((_join(rel, e.name), i, via_link) for e in _scan(top, rel) if _is_dir(e, False))
        elif match is None:  # a literal segment: one lstat, no listing
            child = _join(rel, seg)
            full = os.path.join(top, child)
            if last and os.path.lexists(full):
                stack.append((child, i + 1, via_link))
            elif not last and os.path.isdir(full):
                stack.append((child, i + 1, via_link or os.path.islink(full)))
        else:
            for e in _scan(top, rel):
                if not match(e.name):
                    continue
                if last and not via_link:
                    hits.add(_join(rel, e.name))
                elif last or _is_dir(e, True):
                    stack.append((_join(rel, e.name), i + 1, via_link or e.is_symlink()))
    return hits


def _walk(root: str, rel: str, dirs: str, out: dict[str, bool]) -> None:
    """Everything below folder `rel` into `out` (path -> is a folder), never following a link."""
    if dirs == ALL_DIRS and rel:
        out[rel] = True
    stack = [rel]
    while stack:
        folder = stack.pop()
        entries = _scan(root, folder)
        if not entries and dirs == EMPTY_DIRS and folder:
            out[folder] = True
        for e in entries:
            path = _join(folder, e.name)
            if _is_dir(e, False):
                stack.append(path)
                if dirs == ALL_DIRS:
                    out[path] = True
            else:
                out[path] = False


def _under(path: str, tops: set[str]) -> bool:
    """`path` or one of its parent folders is in `tops` ("" stands for the root)."""
    if "" in tops or path in tops:
        return True
    cut = path.rfind("/")
    while cut > 0:
        if path[:cut] in tops:
            return True
        cut = path.rfind("/", 0, cut)
    return False


def _expand(root: Path, patterns: Iterable[str], dirs: str, unmatched: list[str] | None) -> dict[str, bool]:
    hits: set[str] = set()
    for pattern in patterns:
        named = glob_hits(root, pattern)
        if not named and unmatched is not None:
            unmatched.append(pattern)
        hits |= named
    top = str(root)
    found: dict[str, bool] = {}
    walked: set[str] = set()
    for rel in sorted(hits, key=len):  # parents first: a hit below a walked folder is already in
        if walked and _under(rel, walked):
            continue
        full = os.path.join(top, rel) if rel else top
        if not os.path.islink(full) and os.path.isdir(full):
            walked.add(rel)
            _walk(top, rel, dirs, found)
        elif rel:
            found[rel] = False
    return found


def match_paths(root: Path, patterns: Sequence[str], exclude: Sequence[str] = (), *, dirs: str = FILES,
                unmatched: list[str] | None = None) -> list[str]:
    """Sorted workspace-relative POSIX paths matched by `patterns`, minus what `exclude` matches
    (an excluded folder takes everything below it along).

    Files and symlinks always (a symlink is listed, never followed); folders as `dirs` says:
    `FILES` none, `EMPTY_DIRS` those that hold nothing (so an empty folder can travel as an
    artifact), `ALL_DIRS` every real folder below a matched one (the cache keeps folder modes).
    Patterns that name nothing at all (before `exclude`) are appended to `unmatched`.
    """
    if not patterns:
        return []
    found = _expand(root, patterns, dirs, unmatched)
    if exclude:
        gone: set[str] = set()
        for pattern in exclude:
            gone |= glob_hits(root, pattern)
        found = {p: d for p, d in found.items() if not _under(p, gone)}
    return sorted(p for p, is_dir in found.items() if not is_dir or dirs != FILES)


def matches_nothing(root: Path, pattern: str) -> bool:
    """True when `pattern` names nothing at all in the workspace (for the "matched nothing" warning)."""
    return not glob_hits(root, pattern)
