"""`python scripts/bench.py ab OTHER_TREE [REPS] [--dir FOLDER]`: a same-run A/B of the execution
core's benchmarks (`bench_run`): this checkout against OTHER_TREE (another checkout of loomrun,
e.g. `git worktree add /tmp/base <commit>`), run after run, interleaved, so that both sides see the
same phases of a noisy machine. Each side runs `python -m loomrun` with its own tree first on
PYTHONPATH, in the same venv.

* 100 jobs each `true`, one stage, --jobs 2: median wall time of REPS runs each, and the xargs -P2
  baseline measured in the same rounds
* one job printing 3,000,000 lines: median wall time; every line checked in order on both sides
* 1,000 jobs in a needs DAG: wall time and the supervisor's peak RSS
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

import bench_run

HERE = Path(__file__).resolve().parent.parent


def _side(tree: Path) -> dict[str, str]:
    return {**bench_run.ENV, "PYTHONPATH": str(tree)}


def main(argv: list[str]) -> int:
    where = None
    if "--dir" in argv:
        i = argv.index("--dir")
        where = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if not argv:
        print("usage: bench.py ab OTHER_TREE [REPS] [--dir FOLDER]", file=sys.stderr)
        return 2
    other = Path(argv[0]).resolve()
    reps = int(argv[1]) if len(argv) > 1 else 5
    sides = {"A (other)": other, "B (this)": HERE}
    with tempfile.TemporaryDirectory(prefix="loom-bench-ab-", dir=where) as tmp_name:
        tmp = Path(tmp_name)
        print(f"A = {other}\nB = {HERE}\nrepos in {tmp}, on {bench_run.filesystem_of(tmp)}; "
              f"python {sys.executable}; {reps} rounds")
        jobs = "".join(f"j{i:03d}:\n  stage: s\n  target: linux\n  script: [\"true\"]\n" for i in range(100))
        hundred = bench_run.repo_with(tmp / "hundred", "version: v1\nstages: [s]\n" + jobs)
        seq = bench_run.repo_with(tmp / "seq", "version: v1\nstages: [s]\nseq:\n  stage: s\n  target: linux\n"
                                  "  script: [\"seq 1 3000000\"]\n")
        parts = ["version: v1\nstages: [s]\n"]
        for i in range(1000):
            needs = sorted({f"j{d:04d}" for d in (i - 1, i // 2, i // 3) if 0 <= d < i})
            parts.append(f"j{i:04d}:\n  stage: s\n  target: linux\n  needs: [{', '.join(needs)}]\n"
                         "  script: [\"true\"]\n")
        dag = bench_run.repo_with(tmp / "dag", "".join(parts))
        hundred_t: dict[str, list[float]] = {name: [] for name in sides}
        seq_t: dict[str, list[float]] = {name: [] for name in sides}
        base: list[float] = []
        for _ in range(reps):
            base.append(bench_run.timed("seq 100 | xargs -P2 -I{} sh -c true", shell=True))
            for name, tree in sides.items():
                bench_run.ENV.clear()
                bench_run.ENV.update(_side(tree))
                hundred_t[name].append(bench_run.run_loom(hundred, "-j", "2", sample=False)[0])
                elapsed, _, result = bench_run.run_loom(seq, sample=False)
                bench_run.check_seq_lines(result, 3_000_000)
                seq_t[name].append(elapsed)
        b = statistics.median(base)
        print(f"xargs -P2 baseline: {b:.3f}s")
        for name in sides:
            m = statistics.median(hundred_t[name])
            print(f"  {name}: 100 x true -j 2 {m:.3f}s (overhead {m - b:+.3f}s); "
                  f"3,000,000 lines {statistics.median(seq_t[name]):.2f}s")
        for name, tree in sides.items():
            bench_run.ENV.clear()
            bench_run.ENV.update(_side(tree))
            elapsed, peak, _ = bench_run.run_loom(dag, "-j", "2")
            assert peak is not None
            print(f"  {name}: 1,000-job DAG {elapsed:.2f}s, supervisor peak RSS {peak.supervisor / 2**20:.0f} MB")
    os.environ.pop("PYTHONPATH", None)
    return 0
