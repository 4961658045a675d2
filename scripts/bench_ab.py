"""`python scripts/bench.py ab OTHER_TREE [REPS] [--dir FOLDER] [--dag-rounds N]`: a same-run A/B of the execution
core's benchmarks (`bench_run`): this checkout against OTHER_TREE (another checkout of loomrun,
e.g. `git worktree add /tmp/base <commit>`), run after run, interleaved, so that both sides see the
same phases of a noisy machine. Each side runs `python -m loomrun` with its own tree first on
PYTHONPATH, in the same venv, in a repo of its own.

* 100 jobs each `true`, one stage, --jobs 2: median wall time and CPU time (the run's processes,
  user + system) of REPS runs each, and the xargs -P2 baseline measured in the same rounds
* one job printing 3,000,000 lines: median wall time; every line checked in order on both sides
* 1,000 jobs in a needs DAG: wall time and the supervisor's peak RSS, in 3 rounds (`--dag-rounds`:
  ~13 s a round, and three give a wide interval)

Fairness: which side goes first alternates from round to round (the second run of a round found
the machine warmer: measured up to 8 % on this 2-core VM), and each figure is also given as the
median of the per-round differences (B - A), with a 95 % bootstrap interval, which a slow phase of
the machine shifts for both sides at once. The repos' runtime folders are emptied every 20 rounds,
so that neither side ever has more than 50 runs: retention (spec §13) would otherwise start
removing an old run at the start of each of this tree's runs, work the other tree may not do.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import bench_run

HERE = Path(__file__).resolve().parent.parent
FRESH_EVERY = 20  # rounds: 2 runs a side each (100 jobs, 3 M lines), under retention's 50
DAG_ROUNDS = 3  # by default: the 1,000-job DAG takes ~7 s a run


def _side(tree: Path) -> dict[str, str]:
    return {**bench_run.ENV, "PYTHONPATH": str(tree)}


def _timed_run(repo: Path, *args: str) -> tuple[float, float]:
    """One `loom run`: (wall, CPU of every process it started and waited for: user + system)."""
    before = os.times()
    wall = bench_run.run_loom(repo, *args, sample=False)[0]
    after = os.times()
    return wall, (after.children_user + after.children_system) - (before.children_user + before.children_system)


def _turns(sides: dict[str, Path], round_no: int) -> list[tuple[str, Path]]:
    """The sides in this round's order: which goes first alternates from round to round."""
    order = list(sides.items())
    return order if round_no % 2 == 0 else order[::-1]


def _paired(a: list[float], b: list[float]) -> str:
    """The median of the per-round differences b - a, relative to a's median, with a 95 % bootstrap
    interval of that median."""
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    rng = random.Random(0)
    boot = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(2000))
    base = statistics.median(a)
    med = statistics.median(diffs)
    return (f"B - A per round: median {med * 1000:+.1f} ms ({med / base * 100:+.1f} %), "
            f"95 % interval [{boot[50] * 1000:+.1f}, {boot[1949] * 1000:+.1f}] ms")


def take_option(argv: list[str], flag: str) -> str | None:
    """Remove `flag VALUE` from `argv` and return VALUE (None when the flag is absent)."""
    if flag not in argv:
        return None
    i = argv.index(flag)
    value = argv[i + 1]
    del argv[i:i + 2]
    return value


def parse_args(suite: str, argv: list[str], default_reps: int,
               more: str = "") -> tuple[Path, int, str | None] | None:
    """`OTHER_TREE [REPS] [--dir FOLDER]` of a same-run A/B suite (`more`: the usage of the suite's
    own options, taken from `argv` before): (other tree, reps, folder for the repos); None, with
    the usage printed, when OTHER_TREE is missing."""
    argv = list(argv)
    where = take_option(argv, "--dir")
    if not argv:
        print(f"usage: bench.py {suite} OTHER_TREE [REPS] [--dir FOLDER]{more}", file=sys.stderr)
        return None
    return Path(argv[0]).resolve(), int(argv[1]) if len(argv) > 1 else default_reps, where


def use(tree: Path) -> None:
    """The next `bench_run.run_loom` runs `tree`'s loom."""
    bench_run.ENV.clear()
    bench_run.ENV.update(_side(tree))


def main(argv: list[str]) -> int:
    argv = list(argv)
    dag_rounds = int(take_option(argv, "--dag-rounds") or DAG_ROUNDS)
    args = parse_args("ab", argv, 5, " [--dag-rounds N]")
    if args is None:
        return 2
    other, reps, where = args
    sides = {"A (other)": other, "B (this)": HERE}
    with tempfile.TemporaryDirectory(prefix="loom-bench-ab-", dir=where) as tmp_name:
        tmp = Path(tmp_name)
        print(f"A = {other}\nB = {HERE}\nrepos in {tmp}, on {bench_run.filesystem_of(tmp)}; "
              f"python {sys.executable}; {reps} rounds, the first side alternating")
        seq_flow = "version: v1\nstages: [s]\nseq:\n  stage: s\n  target: linux\n  script: [\"seq 1 3000000\"]\n"
        parts = ["version: v1\nstages: [s]\n"]
        for i in range(1000):
            needs = sorted({f"j{d:04d}" for d in (i - 1, i // 2, i // 3) if 0 <= d < i})
            parts.append(f"j{i:04d}:\n  stage: s\n  target: linux\n  needs: [{', '.join(needs)}]\n"
                         "  script: [\"true\"]\n")
        repos = {name: (bench_run.repo_with(tmp / f"hundred-{n}", bench_run.HUNDRED_JOBS),
                        bench_run.repo_with(tmp / f"seq-{n}", seq_flow),
                        bench_run.repo_with(tmp / f"dag-{n}", "".join(parts)))
                 for n, name in enumerate(sides)}
        hundred_t: dict[str, list[float]] = {name: [] for name in sides}
        hundred_cpu: dict[str, list[float]] = {name: [] for name in sides}
        seq_t: dict[str, list[float]] = {name: [] for name in sides}
        base: list[float] = []
        for round_no in range(reps):
            if round_no % FRESH_EVERY == 0:
                for hundred, seq, _dag in repos.values():
                    for repo in (hundred, seq):
                        shutil.rmtree(repo / ".loom" / ".runtime", ignore_errors=True)
            base.append(bench_run.timed("seq 100 | xargs -P2 -I{} sh -c true", shell=True))
            for name, tree in _turns(sides, round_no):
                use(tree)
                hundred, seq, _dag = repos[name]
                wall, cpu = _timed_run(hundred, "-j", "2")
                hundred_t[name].append(wall)
                hundred_cpu[name].append(cpu)
                elapsed, _, result = bench_run.run_loom(seq, sample=False)
                bench_run.check_seq_lines(result, 3_000_000)
                seq_t[name].append(elapsed)
        b = statistics.median(base)
        print(f"xargs -P2 baseline: {b:.3f}s")
        for name in sides:
            m, cpu = statistics.median(hundred_t[name]), statistics.median(hundred_cpu[name])
            print(f"  {name}: 100 x true -j 2 {m:.3f}s (overhead {m - b:+.3f}s, CPU {cpu:.3f}s); "
                  f"3,000,000 lines {statistics.median(seq_t[name]):.2f}s")
        a_name, b_name = sides
        print(f"  100 x true, {_paired(hundred_t[a_name], hundred_t[b_name])}")
        print(f"  100 x true CPU, {_paired(hundred_cpu[a_name], hundred_cpu[b_name])}")
        print(f"  3,000,000 lines, {_paired(seq_t[a_name], seq_t[b_name])}")
        if dag_rounds:  # --dag-rounds 0: the 100-job and 3 M-line benchmarks only
            dag_t: dict[str, list[float]] = {name: [] for name in sides}
            dag_rss: dict[str, list[int]] = {name: [] for name in sides}
            for round_no in range(dag_rounds):
                for name, tree in _turns(sides, round_no):
                    use(tree)
                    elapsed, peak, _ = bench_run.run_loom(repos[name][2], "-j", "2")
                    assert peak is not None
                    dag_t[name].append(elapsed)
                    dag_rss[name].append(peak.supervisor)
            for name in sides:
                print(f"  {name}: 1,000-job DAG {statistics.median(dag_t[name]):.2f}s, supervisor peak RSS "
                      f"{max(dag_rss[name]) / 2**20:.0f} MB")
            print(f"  1,000-job DAG, {_paired(dag_t[a_name], dag_t[b_name])}")
    os.environ.pop("PYTHONPATH", None)
    return 0
