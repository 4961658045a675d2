#!/usr/bin/env python3
"""Cache store speed: `python scripts/bench.py cache [--mb 100] [--repeat 3] [--levels 1,3,6]`.

Generates a mixed tree (many small text-like files, some medium ones, a few large random and
text-like ones), then times `CacheStore.save` / `restore` next to `tar -c | zstd` and
`zstd -d | tar -x` on the same tree in the same run, at the same zstd level. Prints the best of
`--repeat` for each and the ratios (target: <= 1.5x). `--levels` also times the save at other levels
and thread settings, which is how `pack.LEVEL` / `pack.THREADS` were chosen.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loomrun.cache import pack
from loomrun.cache.store import CacheStore

WORDS = [
    "const", "let", "function", "return", "import", "export", "default", "module", "require",
    "async", "await", "class", "interface", "type", "string", "number", "boolean", "null",
    "undefined", "true", "false", "if", "else", "for", "while", "node_modules", "package",
    "version", "dependencies", "lodash", "react", "build", "dist", "src", "index",
]


def _text(rng: random.Random, size: int) -> bytes:
    out: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + f" {rng.randint(0, 99999)}\n"
        out.append(line)
        length += len(line)
    return "".join(out).encode()[:size]


def generate(root: Path, total_mb: int) -> int:
    """A tree of ~total_mb MB: 25% small text files, 15% medium mixed, 60% large (half random)."""
    rng = random.Random(42)
    budget = total_mb * 1_000_000
    written = 0
    small = int(budget * 0.25)
    for i in range(small // 5000):
        d = root / f"pkg{i % 97:02d}" / f"sub{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i}.js").write_bytes(_text(rng, rng.randint(1000, 9000)))
        written += 5000
    for i in range(int(budget * 0.15) // 100_000):
        data = os.urandom(100_000) if i % 3 == 0 else _text(rng, 100_000)
        (root / f"pkg{i % 97:02d}" / f"medium{i}.bin").write_bytes(data)
        written += 100_000
    large = (budget - written) // 6
    for i in range(6):
        data = os.urandom(large) if i % 2 == 0 else _text(rng, large)
        (root / f"large{i}.dat").write_bytes(data)
    os.symlink("large0.dat", root / "link-to-large")
    os.chmod(root / "large1.dat", 0o755)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _settle() -> None:
    os.sync()  # start each timing with no writeback (or discard) from the last one in flight
    time.sleep(0.2)


def _cpu() -> float:
    """CPU seconds of this process (all threads) plus its finished children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _once(fn: Callable[[], object], before: Callable[[], None] | None) -> tuple[float, float]:
    if before is not None:
        before()
    _settle()
    wall, cpu = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - wall, _cpu() - cpu


def best(repeat: int, fn: Callable[[], object], before: Callable[[], None] | None = None) -> float:
    return min(_once(fn, before)[0] for _ in range(repeat))


def pair(repeat: int, ours: Callable[[], object], theirs: Callable[[], object],
         before: tuple[Callable[[], None] | None, Callable[[], None] | None] = (None, None),
         ) -> tuple[tuple[float, float], tuple[float, float]]:
    """Best (wall, cpu) of each, alternating rounds so machine load hits both alike."""
    a: list[tuple[float, float]] = []
    b: list[tuple[float, float]] = []
    for _ in range(repeat):
        a.append(_once(ours, before[0]))
        b.append(_once(theirs, before[1]))
    return (min(w for w, _ in a), min(c for _, c in a)), (min(w for w, _ in b), min(c for _, c in b))


def _line(what: str, base: str, ours: tuple[float, float], theirs: tuple[float, float]) -> str:
    return (f"{what:8} loom {ours[0]:6.3f}s  {base} {theirs[0]:6.3f}s  ratio {ours[0] / theirs[0]:4.2f}x   "
            f"(cpu {ours[1]:5.2f}s vs {theirs[1]:5.2f}s, {ours[1] / theirs[1]:4.2f}x)")


def _fresh(path: Path) -> Callable[[], None]:
    def reset() -> None:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    return reset


def _sh(cmd: str) -> None:
    subprocess.run(["sh", "-c", cmd], check=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py cache")
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--levels", default="", help="extra save timings, e.g. 1,3,6 (threads -1 and 0)")
    parser.add_argument("--skip-diff", action="store_true", help="skip the --cache-diff wall-time figures")
    args = parser.parse_args(argv)
    if shutil.which("zstd") is None or shutil.which("tar") is None:
        print("bench cache: needs the zstd and tar commands (apt-get install zstd)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="loom-bench-cache-") as tmp_name:
        tmp = Path(tmp_name)
        ws = tmp / "ws"
        size = generate(ws / "tree", args.mb)
        files = sum(1 for _ in (ws / "tree").rglob("*"))
        print(f"tree: {size / 1e6:.1f} MB, {files} entries, zstd level {pack.LEVEL}, "
              f"threads {pack.THREADS}")
        store = CacheStore(tmp / "cache")
        out = tmp / "baseline.tar.zst"
        level = pack.LEVEL

        save, tar_c = pair(
            args.repeat,
            lambda: store.save("bench", ws, ["tree"], source_run="bench"),
            lambda: _sh(f"tar -C '{ws}' -cf - tree | zstd -q -f -{level} -T0 -o '{out}'"),
        )
        ours = store.entry("bench")
        assert ours is not None
        print(_line("save", "tar|zstd", save, tar_c)
              + f"  size {ours['archive_size'] / 1e6:.1f} MB vs {out.stat().st_size / 1e6:.1f} MB")

        dst, dst2 = tmp / "dst", tmp / "dst2"
        restore, tar_x = pair(
            args.repeat,
            lambda: store.restore(["bench"], dst),
            lambda: _sh(f"zstd -q -d -c '{out}' | tar -C '{dst2}' -xf -"),
            (_fresh(dst), _fresh(dst2)),
        )
        print(_line("restore", "zstd|tar", restore, tar_x))

        for spec in filter(None, args.levels.split(",")):
            for threads in (-1, 0):
                target = tmp / "level.tar.zst"

                def save_at(lvl: int = int(spec), thr: int = threads, path: Path = target) -> None:
                    with open(path, "wb") as fh:
                        pack.pack(fh, ws, ["tree"], level=lvl, threads=thr)

                took = best(args.repeat, save_at)
                print(f"  level {spec:>2} threads {threads:>2}: save {took:6.3f}s  "
                      f"size {target.stat().st_size / 1e6:.1f} MB")
    ok = save[0] / tar_c[0] <= 1.5 and restore[0] / tar_x[0] <= 1.5
    print("target <= 1.5x: " + ("met" if ok else "NOT met"))
    if not args.skip_diff:
        bench_cache_diff(args.repeat)
    return 0


WAITING = """version: v1
stages: [fetch, build]
deps:
  stage: fetch
  target: linux
  cache: {key: deps-v1, paths: [deps]}
  script: ["sleep 1", "mkdir -p deps && echo lib > deps/lib.txt"]
{jobs}"""
WAIT_JOB = """build{i}:
  stage: build
  target: linux
  artifacts: {{paths: [out{i}]}}
  script: ["sleep 1", "mkdir -p out{i} && cat deps/lib.txt > out{i}/r.txt"]
"""
CPU_JOB = """build{i}:
  stage: build
  target: linux
  artifacts: {{paths: [out{i}]}}
  script: ["mkdir -p out{i} && python3 -c 'sum(i*i for i in range(6_000_000))' && echo ok > out{i}/r.txt"]
"""


def _loom_run(repo: Path, *flags: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "loomrun", "run", "--local", "-q", *flags], cwd=repo,
                          capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"loom run {' '.join(flags)} failed:\n{proc.stderr}")
    return took


def bench_cache_diff(repeat: int) -> None:
    """`--cache-diff` wall time next to one plain run of the same workflow, in the same run."""
    for label, job in (("waiting (sleep)", WAIT_JOB), ("CPU-bound", CPU_JOB)):
        with tempfile.TemporaryDirectory(prefix="loom-bench-diff-") as tmp_name:
            repo = Path(tmp_name)
            (repo / ".loom").mkdir()
            jobs = "".join(job.format(i=i) for i in range(4))
            (repo / ".loom" / "workflow.yml").write_text(WAITING.replace("{jobs}", jobs))
            _loom_run(repo)  # fill the cache, so pass 2 hits it as in real use
            plain, diff = [], []
            for _ in range(repeat):
                plain.append(_loom_run(repo))
                diff.append(_loom_run(repo, "--cache-diff"))
            p, d = min(plain), min(diff)
            target = " (target <= 1.2x)" if label.startswith("waiting") else ""
            print(f"--cache-diff, {label}: {d:.2f}s  plain run {p:.2f}s  ratio {d / p:.2f}x{target}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
