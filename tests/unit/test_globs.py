"""Workspace globs (`loomrun.globs`) on real trees: the pattern language, symlinks listed and never
walked, loops that must not hang, excludes, and the folder modes artifacts and the cache use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loomrun.globs import ALL_DIRS, EMPTY_DIRS, glob_hits, match_paths, matches_nothing


def _make(root: Path, files: list[str], links: dict[str, str] | None = None, dirs: list[str] | None = None) -> Path:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    for rel in dirs or []:
        (root / rel).mkdir(parents=True, exist_ok=True)
    for rel, target in (links or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    return root


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return _make(tmp_path / "ws", [
        "a.txt", ".hidden.txt", "b.log", "src/x.txt", "src/deep/y.txt", "src/deep/z.log",
        "out/lib.so.1", "out/.cache/k.txt", "v1/lib.so",
    ], links={"out/lib.so": "lib.so.1", "current": "v1", "out/abs": "/etc/hostname",
              "ext": "/usr/share", "dangling": "nowhere"}, dirs=["out/empty/deeper", "src/none"])


@pytest.mark.parametrize(("pattern", "expected"), [
    ("*.txt", [".hidden.txt", "a.txt"]),  # dot files match, as with include_hidden
    ("?.txt", ["a.txt"]),
    ("[ab].*", ["a.txt", "b.log"]),
    ("[!a]*.log", ["b.log"]),
    ("**/*.txt", [".hidden.txt", "a.txt", "out/.cache/k.txt", "src/deep/y.txt", "src/x.txt"]),  # ** = zero folders too
    ("src/**/*.log", ["src/deep/z.log"]),
    ("src", ["src/deep/y.txt", "src/deep/z.log", "src/x.txt"]),  # a folder stands for what is below it
    ("src/", ["src/deep/y.txt", "src/deep/z.log", "src/x.txt"]),
    ("./src/deep", ["src/deep/y.txt", "src/deep/z.log"]),
    ("src/**", ["src/deep/y.txt", "src/deep/z.log", "src/x.txt"]),
    ("missing/**", []),
    ("a.txt/x", []),
    ("current", ["current"]),  # a symlinked folder is listed as the link
    ("current/lib.so", ["current/lib.so"]),  # a literal segment may pass through a link inside
    ("ext/*", []),  # ... but never to a match outside the workspace
    ("out/*", ["out/.cache/k.txt", "out/abs", "out/lib.so", "out/lib.so.1"]),
    ("dangling", ["dangling"]),
])
def test_pattern_language(ws: Path, pattern: str, expected: list[str]) -> None:
    assert match_paths(ws, [pattern]) == expected


def test_double_star_lists_links_and_never_walks_them(ws: Path) -> None:
    everything = match_paths(ws, ["**"])
    assert "current" in everything and "ext" in everything
    assert not any(p.startswith(("current/", "ext/")) for p in everything)
    assert match_paths(ws, ["**/lib.so"]) == ["out/lib.so", "v1/lib.so"]


def test_bad_patterns_are_refused(ws: Path) -> None:
    for bad in ("/etc", "../x", "a/../../b", ""):
        with pytest.raises(ValueError):
            match_paths(ws, [bad])


def test_exclude_takes_files_and_whole_folders(ws: Path) -> None:
    assert match_paths(ws, ["src"], ["**/*.log"]) == ["src/deep/y.txt", "src/x.txt"]
    assert match_paths(ws, ["src"], ["src/de*"]) == ["src/x.txt"]
    assert match_paths(ws, ["src", "a.txt"], ["src"]) == ["a.txt"]


def test_folder_modes(ws: Path) -> None:
    assert match_paths(ws, ["out"], dirs=EMPTY_DIRS) == [
        "out/.cache/k.txt", "out/abs", "out/empty/deeper", "out/lib.so", "out/lib.so.1"]
    assert match_paths(ws, ["out/empty"], dirs=EMPTY_DIRS) == ["out/empty/deeper"]
    assert match_paths(ws, ["src/none"], dirs=EMPTY_DIRS) == ["src/none"]
    assert match_paths(ws, ["src/none"]) == []
    assert match_paths(ws, ["out"], ["out/empty/*"], dirs=EMPTY_DIRS) == [
        "out/.cache/k.txt", "out/abs", "out/lib.so", "out/lib.so.1"]
    assert match_paths(ws, ["out"], dirs=ALL_DIRS) == [
        "out", "out/.cache", "out/.cache/k.txt", "out/abs", "out/empty", "out/empty/deeper", "out/lib.so",
        "out/lib.so.1"]


def test_matches_nothing(ws: Path) -> None:
    assert matches_nothing(ws, "nothing/**/*.txt")
    assert matches_nothing(ws, "*.png")
    assert not matches_nothing(ws, "src/none")  # an empty folder is something
    assert not matches_nothing(ws, "dangling")
    assert glob_hits(ws, ".") == {""}


def _loops(root: Path, width: int, depth: int) -> Path:
    """A node_modules-like tree where every package links back to the top and to itself."""
    for i in range(width):
        pkg = root / "node_modules" / f"p{i}"
        for d in range(depth):
            pkg = pkg / f"d{d}"
            pkg.mkdir(parents=True)
            (pkg / "f.txt").write_text("x")
            (pkg / "top").symlink_to(os.path.relpath(root, pkg))
            (pkg / "self").symlink_to(".")
    (root / "node_modules" / "self").symlink_to("..")
    return root


@pytest.mark.timeout(30)
def test_symlink_loops_do_not_hang(tmp_path: Path) -> None:
    """The standard library's glob follows `top -> ../..` and `self -> .` under `**`: with a few of
    them the walk is exponential (it ran until the timeout). Every pattern form finishes here, and
    lists each link once, as a link."""
    root = _loops(tmp_path / "ws", width=4, depth=6)
    txt = match_paths(root, ["**/*.txt"])
    assert len(txt) == 24 and all(p.endswith("/f.txt") for p in txt)
    everything = match_paths(root, ["node_modules"])
    assert len(everything) == 24 * 3 + 1
    assert "node_modules/self" in everything
    assert match_paths(root, ["**/self"]) == sorted(["node_modules/self", *(p[: -len("f.txt")] + "self" for p in txt)])
    assert len(match_paths(root, ["**/d*/**"], dirs=ALL_DIRS)) == 24 * 4
    via = "node_modules/self/node_modules/self/node_modules/p0/d0/f.txt"  # literal segments through links
    assert match_paths(root, [via]) == [via]


@pytest.mark.timeout(30)
def test_every_walk_over_a_loop_finishes(tmp_path: Path) -> None:
    """Cache paths (pack), cache key files, and the --cache-diff fingerprint share the walk."""
    from loomrun.cache.compare import fingerprint
    from loomrun.cache.keys import files_digest
    from loomrun.cache.pack import collect
    from loomrun.cache.store import CacheStore

    root = _loops(tmp_path / "ws", width=3, depth=5)
    members = collect(root, ["**/*.txt", "node_modules/p0"])
    assert len([m for m in members if m.endswith("f.txt")]) == 15
    assert "node_modules/p0/d0/self" in members
    _digest, warnings = files_digest(root, ["**/*.txt"])
    assert warnings == []
    assert len(fingerprint(root, ["**/*.txt", "node_modules"])) == 15 * 3 + 1
    saved = CacheStore(tmp_path / "cache").save("k", root, ["node_modules"], source_run="r")
    assert saved.files == 15 * 3 + 1 + (1 + 3 + 15)  # files and links; node_modules and its folders

