#!/usr/bin/env python3
"""Glob timing report: `python scripts/bench.py globs [--packages N] [--files M] [--repeat R]`.

Builds a node_modules-like tree in a temp folder (N packages of M files in nested folders, a
`.bin/` of links per package, links between packages) and times the pattern forms artifacts and
caches use, for:
* `stdlib`: `glob.glob(recursive=True, include_hidden=True)`, what `loomrun.globs` used before
  (the baseline; it follows links to folders under `**`, so the tree has no loop for it);
* `loomrun`: `loomrun.globs.glob_hits`, the walk we keep;
* `wcmatch`: `wcmatch.glob.glob` with GLOBSTAR | DOTGLOB (does not follow links under `**`), when
  the package is installed, plus the outside-the-workspace check every hit then needs.
Then `match_paths` (hits + folder walks) on the same tree, and both walkers again once loops
(`self -> ..`) are added, where stdlib is not run (it does not finish). A report, never an
assertion; the temp folder is removed afterwards.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomrun.globs import check_pattern, glob_hits, match_paths

PATTERNS = ["**/*.txt", "node_modules", "**/package.json", "node_modules/*/dist/**", "node_modules/p01*/lib/*/*.js"]


def _generate(root: Path, packages: int, files: int) -> None:
    nm = root / "node_modules"
    for p in range(packages):
        pkg = nm / f"p{p:04d}"
        (pkg / ".bin").mkdir(parents=True)
        (pkg / "package.json").write_text("{}")
        for f in range(files):
            folder = pkg / ("dist" if f % 3 == 0 else "lib") / f"m{f % 7}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{f}.{'txt' if f % 2 else 'js'}").write_text("x")
        (pkg / ".bin" / "tool").symlink_to("../lib/m1/f1.txt")


def _add_folder_links(root: Path) -> None:
    """Links to folders, no loop: a chain of `peer -> ../p<n-1>` (pnpm-like) and `.bin/lib -> ../lib`."""
    for pkg in sorted((root / "node_modules").iterdir()):
        (pkg / ".bin" / "lib").symlink_to("../lib")
        if pkg.name != "p0000":
            (pkg / "peer").symlink_to(f"../p{int(pkg.name[1:]) - 1:04d}")


def _add_loops(root: Path) -> None:
    (root / "node_modules" / "self").symlink_to("..")
    for pkg in (root / "node_modules").iterdir():
        if pkg.name.startswith("p"):
            (pkg / "dist" / "up").symlink_to("../..")


def _stdlib(root: Path, pattern: str) -> set[str]:
    return {os.path.normpath(h) for h in glob.glob(check_pattern(pattern), root_dir=root, recursive=True,
                                                   include_hidden=True)}


def _wcmatch() -> Callable[[Path, str], set[str]] | None:
    try:
        from wcmatch import glob as wg
    except ImportError:
        return None

    def hits(root: Path, pattern: str) -> set[str]:
        top, real = str(root), os.path.realpath(root)
        out = set()
        for h in wg.glob(check_pattern(pattern), flags=wg.GLOBSTAR | wg.DOTGLOB, root_dir=top):
            parent = os.path.realpath(os.path.dirname(os.path.join(top, h)))
            if parent == real or parent.startswith(real + os.sep):  # a match reached through a link
                out.add(os.path.normpath(h))
        return out

    return hits


def _time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _row(label: str, took: float, base: float | None, count: int) -> None:
    ratio = f"{took / base:6.2f}x" if base else "      "
    print(f"  {label:<10} {took * 1000:9.1f} ms {ratio}  {count} hits")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench.py globs")
    ap.add_argument("--packages", type=int, default=300)
    ap.add_argument("--files", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    wc = _wcmatch()
    tmp = Path(tempfile.mkdtemp(prefix="loom-bench-globs-"))
    try:
        root = tmp / "ws"
        _generate(root, args.packages, args.files)
        print(f"tree: {args.packages} packages x {args.files} files; best of {args.repeat}; ratio to stdlib")
        for title in ("no link to a folder", "links to folders, no loop"):
            print(f"== {title}")
            for pattern in PATTERNS:
                print(f"{pattern}")
                base, found = _time(lambda p=pattern: _stdlib(root, p), args.repeat)
                _row("stdlib", base, None, len(found))  # type: ignore[arg-type]
                took, found = _time(lambda p=pattern: glob_hits(root, p), args.repeat)
                _row("loomrun", took, base, len(found))  # type: ignore[arg-type]
                if wc is not None:
                    took, found = _time(lambda p=pattern: wc(root, p), args.repeat)
                    _row("wcmatch", took, base, len(found))  # type: ignore[arg-type]
            took, found = _time(lambda: match_paths(root, ["node_modules"]), args.repeat)
            print(f"match_paths(node_modules): {took * 1000:.1f} ms, {len(found)} paths")  # type: ignore[arg-type]
            if title.startswith("no"):
                _add_folder_links(root)
        _add_loops(root)
        print("with loops (self -> .., dist/up -> ../..); stdlib not run")
        for pattern in ("**/*.txt", "**/package.json"):
            took, found = _time(lambda p=pattern: glob_hits(root, p), args.repeat)
            print(f"  loomrun {pattern}: {took * 1000:.1f} ms, {len(found)} hits")  # type: ignore[arg-type]
            if wc is not None:
                took, found = _time(lambda p=pattern: wc(root, p), args.repeat)
                print(f"  wcmatch {pattern}: {took * 1000:.1f} ms, {len(found)} hits")  # type: ignore[arg-type]
    finally:
        shutil.rmtree(tmp)
    return 0
