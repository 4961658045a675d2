#!/usr/bin/env python3
"""Workspace snapshot timing report: `python scripts/bench.py workspace [--files N] [--mb M] [--keep]`.

Generates a git repo of N files (~M MB in total, committed, with some modified and untracked files)
in a temp folder, then times `make_snapshot` next to two baselines that copy the same tree:
`cp -a` and `tar c | tar x` (both
without `.git`). A report, never an assertion; the temp folder is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomrun.workspace import make_snapshot, remove_snapshot


def _generate(root: Path, files: int, total_mb: int) -> None:
    rng = random.Random(42)
    mean = total_mb * (1 << 20) // max(files, 1)
    blob = rng.randbytes(mean * 4 + 1)
    for i in range(files):
        folder = root / f"pkg{i % 50:02d}" / f"mod{(i // 50) % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = min(len(blob), int(rng.expovariate(1 / mean))) if mean else 0
        start = rng.randrange(0, len(blob) - size + 1)
        (folder / f"f{i:05d}.dat").write_bytes(blob[start:start + size])
    (root / ".gitignore").write_text("*.log\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        # gc.auto=0: a background `git gc` would repack .git while the baselines copy the tree.
        subprocess.run(["git", "-c", "gc.auto=0", *args], cwd=root, env=env, check=True)
    (root / "pkg00" / "untracked.txt").write_text("new\n")
    (root / "pkg01" / "ignored.log").write_text("ignored\n")


def _timed(label: str, fn: Callable[[], object], baseline: float | None) -> float:
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    ratio = f"  ({took / baseline:.2f}x of cp -a)" if baseline else ""
    print(f"{label:<28} {took:8.3f}s{ratio}")
    return took


def _sh(cmd: str) -> None:
    # The baselines copy the working files only (not .git), like the snapshot does.
    subprocess.run(["bash", "-O", "extglob", "-O", "dotglob", "-c", cmd], check=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py workspace")
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="loom-bench-workspace-"))
    try:
        src = base / "src"
        src.mkdir()
        print(f"generating {args.files} files / ~{args.mb} MB in {src} ...", file=sys.stderr)
        _generate(src, args.files, args.mb)
        snap: list[object] = []
        for n in range(args.rounds):
            print(f"-- round {n + 1}")
            cp = _timed("cp -a", lambda: _sh(f"mkdir '{base}/cp' && cp -a '{src}'/!(.git) '{base}/cp/'"), None)
            _timed("tar c | tar x", lambda: _sh(f"mkdir '{base}/tar' && tar c -C '{src}' --exclude=./.git . "
                                               f"| tar x -C '{base}/tar'"), cp)
            _timed("make_snapshot (git)", lambda: snap.append(make_snapshot(src, base / "snap")), cp)
            _timed("remove_snapshot", lambda: remove_snapshot(base / "snap"), cp)
            for name in ("cp", "tar"):
                shutil.rmtree(base / name)
        print(f"snapshot: {snap[-1]}")
    finally:
        remove_snapshot(base)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
