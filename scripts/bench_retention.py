"""`python scripts/bench.py retention OTHER_TREE [REPS] [--dir FOLDER]`: what retention (spec §13)
costs a run in the steady state of a busy repo, a same-run A/B against OTHER_TREE (another checkout,
as for `bench.py ab`).

Each side gets a repo whose store already holds fifty runs of 100 `true` jobs (made once, by this
tree, then copied), so that every run of a tree with retention removes one old run (~1,500 files)
while it goes. Then REPS rounds, the first side alternating: a 100-job run at `-j 2` and a 1-job run
(`--workflow .loom/one.yml`) on each side, wall time and CPU (user + system of every process the run
started and waited for), each also as the median of the per-round differences with a 95 %
bootstrap interval. `bench.py ab` keeps its stores under fifty runs so that it never measures this.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

import bench_ab
import bench_run

HERE = Path(__file__).resolve().parent.parent
STORE_RUNS = 50  # runtime.retention.runs' default


def main(argv: list[str]) -> int:
    args = bench_ab.parse_args("retention", argv, 10)
    if args is None:
        return 2
    other, reps, where = args
    sides = {"A (other)": other, "B (this)": HERE}
    one = "version: v1\nstages: [s]\nj:\n  stage: s\n  target: linux\n  script: [\"true\"]\n"
    with tempfile.TemporaryDirectory(prefix="loom-bench-retention-", dir=where) as tmp_name:
        tmp = Path(tmp_name)
        print(f"A = {other}\nB = {HERE}\nrepos in {tmp}, on {bench_run.filesystem_of(tmp)}; "
              f"{STORE_RUNS} runs of 100 jobs in each store first; {reps} rounds, the first side alternating")
        repos = {}
        for n, name in enumerate(sides):
            repos[name] = bench_run.repo_with(tmp / f"busy-{n}", bench_run.HUNDRED_JOBS)
            (repos[name] / ".loom" / "one.yml").write_text(one)
        first, *rest = sides
        bench_ab.use(HERE)
        for _ in range(STORE_RUNS):
            bench_run.run_loom(repos[first], "-j", "2", sample=False)
        for name in rest:
            shutil.copytree(repos[first] / ".loom" / ".runtime", repos[name] / ".loom" / ".runtime", symlinks=True)
        figures: dict[str, dict[str, list[tuple[float, float]]]] = {k: {name: [] for name in sides}
                                                                     for k in ("hundred", "one")}
        for round_no in range(reps):
            for kind, args in (("hundred", ("-j", "2")), ("one", ("--workflow", ".loom/one.yml"))):
                for name, tree in bench_ab._turns(sides, round_no):
                    bench_ab.use(tree)
                    figures[kind][name].append(bench_ab._timed_run(repos[name], *args))
        a_name, b_name = sides
        for kind, label in (("hundred", "100 x true -j 2"), ("one", "1 x true")):
            for name in sides:
                wall = statistics.median(w for w, _ in figures[kind][name])
                cpu = statistics.median(c for _, c in figures[kind][name])
                print(f"  {name}: {label} {wall:.3f}s, CPU {cpu:.3f}s")
            walls = {name: [w for w, _ in figures[kind][name]] for name in sides}
            cpus = {name: [c for _, c in figures[kind][name]] for name in sides}
            print(f"  {label}, {bench_ab._paired(walls[a_name], walls[b_name])}")
            print(f"  {label} CPU, {bench_ab._paired(cpus[a_name], cpus[b_name])}")
    return 0
