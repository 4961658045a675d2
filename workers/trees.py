"""Copying artifact and cache trees on the host. Runs in the worker process.

`copy_paths` copies matched workspace paths (files, symlinks, empty folders) into a fresh staging
folder; `copy_into` copies a staged tree into a workspace that may already hold the same paths.
Neither follows a link, in the source or in the destination: links are copied as links, and
whatever stands in the destination where the source has something else is replaced (the source's
version wins): a file or link where the source has a folder, a folder where it has a file or a
link. Files and links are written beside their target and renamed over it, so a file some process
still runs or reads is replaced, never truncated (ETXTBSY), and a link in the way is never written
through.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

_names = itertools.count()


def copy_paths(root: Path, rels: Iterable[str], dest: Path) -> tuple[list[str], list[str]]:
    """Copy each of `rels` (below `root`) to the same place below `dest`.

    Returns (paths copied, paths skipped because they are sockets, fifos or devices)."""
    copied: list[str] = []
    skipped: list[str] = []
    made: set[str] = set()
    for rel in rels:
        src, target = os.path.join(root, rel), os.path.join(dest, rel)
        mode = os.lstat(src).st_mode
        parent = os.path.dirname(target)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        if stat.S_ISDIR(mode):
            os.makedirs(target, exist_ok=True)
            shutil.copymode(src, target)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), target)
        elif stat.S_ISREG(mode):
            shutil.copy2(src, target, follow_symlinks=False)
        else:
            skipped.append(rel)
            continue
        copied.append(rel)
    return copied, skipped


def copy_into(src: Path, dest: Path) -> int:
    """Copy the tree `src` into the existing folder `dest`, merging folders; the number of files,
    links and folders written. Raises OSError (with the path concerned) when one cannot be."""
    written = 0
    modes: list[tuple[str, int]] = []  # folders made here get their mode once they are filled
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(src, rel)) as it:
            entries = list(it)
        for entry in entries:
            sub = os.path.join(rel, entry.name)
            target = os.path.join(dest, sub)
            if entry.is_dir(follow_symlinks=False):
                if _make_dir(target):
                    modes.append((target, stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)))
                stack.append(sub)
            else:
                _replace(entry, target)
            written += 1
    for path, mode in reversed(modes):  # children before parents: a 0555 folder is closed last
        os.chmod(path, mode)
    return written


def _make_dir(target: str) -> bool:
    """A real folder at `target`; True when it had to be made. A file or link in the way goes."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        os.mkdir(target)
        return True
    if stat.S_ISDIR(st.st_mode):
        return False
    os.unlink(target)
    os.mkdir(target)
    return True


def _replace(entry: os.DirEntry[str], target: str) -> None:
    try:
        if stat.S_ISDIR(os.lstat(target).st_mode):
            shutil.rmtree(target)
    except FileNotFoundError:
        pass
    # A short temp name: `.<name>.tmp` would overflow NAME_MAX for a 250-byte name.
    tmp = os.path.join(os.path.dirname(target), f".loom-{os.getpid()}-{next(_names)}.tmp")
    try:
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), tmp)
        else:
            shutil.copy2(entry.path, tmp, follow_symlinks=False)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
