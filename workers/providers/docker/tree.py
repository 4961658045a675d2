"""Trees on this machine's disk the way artifacts and caches need them: a symlink is kept as a
symlink (relative or absolute, dangling or not) and never followed, an empty folder is kept, and a
tree copied onto a folder wins over whatever that folder holds at the same paths (a file where the
tree has a folder, a folder or link where it has a file). Worker process; plain files, no engine.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from loomrun.globs import check_pattern


def overlay(src: Path, dest: Path) -> None:
    """Copy the contents of folder `src` onto folder `dest`, `src`'s version of every path winning.
    Paths of `dest` that `src` does not have stay. OSError when a path cannot be written."""
    dest.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        here = dest if rel == "." else dest / rel
        if rel != ".":
            _folder_at(here)
        for name in list(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):  # a link to a folder: a link, not entered
                dirnames.remove(name)
                filenames.append(name)
        for name in filenames:
            place(Path(dirpath, name), here / name, move=False)


def place(src: Path, dest: Path, move: bool) -> None:
    """Put the file, link or empty folder `src` at `dest` (moved, or copied), replacing what is there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove(dest)
    if move:
        os.replace(src, dest)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dest)
    elif src.is_dir():
        dest.mkdir()
    else:
        shutil.copy2(src, dest)


def remove(path: Path) -> None:
    """Remove whatever is at `path` (a link itself, never its target); nothing there is fine."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _folder_at(path: Path) -> None:
    """A real folder at `path`: a link (even to a folder: writing through it could leave the
    workspace) or a file there is replaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        path.mkdir()
        return
    if not stat.S_ISDIR(mode):
        os.unlink(path)
        path.mkdir()


def empty_folders(root: Path, patterns: Sequence[str], exclude: Sequence[str] = ()) -> set[str]:
    """Relative paths of the empty folders under `root` that `patterns` name, or hold (an empty
    folder inside a named one), minus those `exclude` names or holds. `match_paths` lists files and
    links only; a listed folder that exists but is empty must arrive downstream too."""
    found: set[str] = set()
    for top in _outermost(_named_folders(root, patterns)):
        for dirpath, dirnames, filenames in os.walk(root / top):  # links to folders: listed, not entered
            if not dirnames and not filenames:
                found.add(Path(dirpath).relative_to(root).as_posix())
    found.discard(".")
    if found and exclude:
        gone = _named_folders(root, exclude)
        found = {d for d in found if not any(d == g or d.startswith(g + "/") for g in gone)}
    return found


def _named_folders(root: Path, patterns: Sequence[str]) -> list[str]:
    """Real folders the patterns match, none reached through a link."""
    real_root = os.path.realpath(root)
    named: list[str] = []
    for pattern in patterns:
        for hit in glob.glob(check_pattern(pattern), root_dir=root, recursive=True, include_hidden=True):
            rel = os.path.normpath(hit)
            full = os.path.join(root, rel)
            if os.path.isdir(full) and os.path.realpath(full) == os.path.normpath(os.path.join(real_root, rel)):
                named.append(Path(rel).as_posix())
    return named


def _outermost(folders: list[str]) -> list[str]:
    """The folders none of the others holds: each part of the tree is walked once (`**` names them all)."""
    if "." in folders:
        return ["."]
    kept: set[str] = set()
    for folder in sorted(set(folders), key=lambda f: f.count("/")):
        parts = folder.split("/")
        if not any("/".join(parts[:i]) in kept for i in range(1, len(parts))):
            kept.add(folder)
    return sorted(kept)
