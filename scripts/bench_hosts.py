"""`python scripts/bench.py hosts [REPS] [--dir FOLDER] [--only jobserver|cpu|gc] [--runs N]`: shared hosts and
heavy builds (issue 15), every figure next to a baseline measured in the same run, rounds
interleaved so both sides see the same phases of a noisy machine.

* jobserver: 100 jobs each `true`, -j 2, jobserver on vs `runtime.jobserver: off` (target: <= 2 %)
* cpu: four jobs each running make on 40 generated C files with gcc, --jobs 2: plain `make` with
  the jobserver, plain `make` without it (one compiler per job), and `make -j` (unbounded): wall
  time, and the peak number of compilers running at once (from the start/end stamps a CC wrapper
  writes around each gcc). Expected: the jobserver's time as good as the better of the other two,
  with at most 2 compilers at once.
* gc: `loom gc --dry-run` and `loom gc` on N (10,000) generated runs, next to `rm -rf` of the same
  files on a twin store (this machine's ext4 removes files slowly, loaded or not); the writer's retention plan when
  nothing is due (50 runs present), in-process; and `loom run` of one `true` job with 50 finished
  runs present vs none (what retention adds to a run's start when nothing is due)
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_run

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.runfiles import DAY_NS, fake_run  # noqa: E402

C_FILE = """
static double work{n}(int k) {{
    double acc = 0;
    for (int i = 1; i < k; i++) {{ acc += (double)(i % {m}) / (i + {n}); }}
    return acc;
}}
{decls}
double entry{n}(void) {{ return work{n}({k}) {calls}; }}
"""
MAKEFILE = """SRCS := $(wildcard src/*.c)
OBJS := $(SRCS:src/%.c=$(OUT)/%.o)
all: $(OBJS)
$(OUT)/%.o: src/%.c | $(OUT)
\t$(CC) -O2 -c $< -o $@
$(OUT):
\tmkdir -p $@
"""
CC_STAMP = """#!/bin/sh
echo "start $$ $(date +%s%N)" >> "$STAMPS"
gcc "$@"; rc=$?
echo "end $$ $(date +%s%N)" >> "$STAMPS"
exit $rc
"""


def _loom_run(repo: Path, *args: str, env: dict[str, str] | None = None, cpu: list[float] | None = None) -> float:
    """Wall time of one `loom run`; `cpu` gets the CPU seconds of its whole process tree (reaped
    children: loom, writer, fork server, workers, steps), which a loaded machine disturbs less."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([*bench_run.LOOM, "run", "--local", "-q", *args], cwd=repo, env=env or bench_run.ENV,
                         capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"loom run failed in {repo}:\n{out.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall


def _git_repo(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


# ---- jobserver on vs off, 100 x true ----------------------------------------------------------------

def bench_jobserver(tmp: Path, reps: int) -> None:
    jobs = "".join(f"j{i:03d}:\n  stage: s\n  target: linux\n  script: [\"true\"]\n" for i in range(100))
    wf = "version: v1\nstages: [s]\n" + jobs
    on = _git_repo(tmp / "js-on", {".loom/workflow.yml": wf})
    off = _git_repo(tmp / "js-off", {".loom/workflow.yml": wf, ".loom/config.yml": "runtime:\n  jobserver: \"off\"\n"})
    times: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(reps):
        for side in ("on", "off") if i % 2 == 0 else ("off", "on"):  # neither side always goes first
            times[side].append(_loom_run(on if side == "on" else off, "-j", "2", cpu=cpu[side]))
    a, b = statistics.median(times["on"]), statistics.median(times["off"])
    ca, cb = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    spread = {k: f"{min(v):.3f}-{max(v):.3f}" for k, v in times.items()}
    print(f"100 x true, -j 2, {reps} rounds: wall on {a:.3f}s, off {b:.3f}s: {(a - b) / b * 100:+.1f}% "
          f"(target within 2%; ranges on {spread['on']}, off {spread['off']}); CPU of the whole tree "
          f"on {ca:.3f}s, off {cb:.3f}s: {(ca - cb) / cb * 100:+.1f}%")


# ---- a CPU-heavy workflow ---------------------------------------------------------------------------

def _cpu_repo(tmp: Path, name: str, script: str, config: str = "") -> Path:
    files = {"Makefile": MAKEFILE, "cc-stamp.sh": CC_STAMP}
    for n in range(40):
        decls = "".join(f"double helper{n}_{j}(double x) {{ return x * {j + 1}.5 / (x + {j + 2}); }}\n"
                        for j in range(60))
        calls = "".join(f" + helper{n}_{j}({j}.0)" for j in range(60))
        files[f"src/f{n:02d}.c"] = C_FILE.format(n=n, m=7 + n % 5, k=1000 + n, decls=decls, calls=calls)
    job = (f'  stage: s\n  target: linux\n  variables: {{CC: "sh $CI_PROJECT_DIR/cc-stamp.sh"}}\n'
           f'  script: ["{script} OUT=build-$CI_JOB_NAME"]\n')
    files[".loom/workflow.yml"] = "version: v1\nstages: [s]\n" + "".join(f"c{i}:\n{job}" for i in range(4))
    if config:
        files[".loom/config.yml"] = config
    return _git_repo(tmp / name, files)


def _peak(stamps: Path) -> int:
    edges: list[tuple[int, int]] = []
    for line in stamps.read_text().splitlines():
        kind, _, ns = line.split()
        edges.append((int(ns), 1 if kind == "start" else -1))
    best = now = 0
    for _, step in sorted(edges):
        now += step
        best = max(best, now)
    return best


def bench_cpu(tmp: Path, reps: int) -> None:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        print("cpu: needs gcc and make (scripts/test.sh installs them); skipped")
        return
    modes = {
        "jobserver (plain make)": _cpu_repo(tmp, "cpu-js", "make"),
        "no jobserver (plain make)": _cpu_repo(tmp, "cpu-off", "make", 'runtime:\n  jobserver: "off"\n'),
        "make -j (unbounded)": _cpu_repo(tmp, "cpu-j", "make -j", 'runtime:\n  jobserver: "off"\n'),
    }
    walls: dict[str, list[float]] = {m: [] for m in modes}
    cpus: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, list[int]] = {m: [] for m in modes}
    names = list(modes)
    for i in range(reps):
        for mode in names[i % 3:] + names[:i % 3]:  # each mode takes its turn going first
            stamps = tmp / f"stamps-{i}-{modes[mode].name}.log"
            walls[mode].append(_loom_run(modes[mode], "--jobs", "2", env={**bench_run.ENV, "STAMPS": str(stamps)},
                                         cpu=cpus[mode]))
            peaks[mode].append(_peak(stamps))
    first = names[0]
    print(f"4 jobs x make of 40 C files (gcc -O2), --jobs 2, {os.cpu_count()} CPUs, {reps} rounds:")
    for mode in names:
        w = walls[mode]
        paired = statistics.median(a / b for a, b in zip(walls[first], w, strict=True))
        print(f"  {mode:27s} wall {statistics.median(w):6.2f}s (range {min(w):.2f}-{max(w):.2f}; jobserver/this "
              f"per round {paired:.2f}), CPU {statistics.median(cpus[mode]):6.1f}s, "
              f"peak compilers {max(peaks[mode])} (per round {peaks[mode]})")


# ---- gc and retention -------------------------------------------------------------------------------

def bench_gc(tmp: Path, reps: int, runs: int) -> None:
    from loomrun.writer import retention

    now = time.time_ns()
    stores = []
    start = time.perf_counter()
    for name in ("gc-big", "rm-big"):  # the same store twice: one for loom gc, one for rm -rf
        repo = _git_repo(tmp / name, {".loom/workflow.yml": "version: v1\nstages: [s]\n"})
        for i in range(runs):  # back to 20 days; snapshots of the newest 200
            fake_run(repo / ".loom" / ".runtime", now - i * DAY_NS * 20 // runs, snapshot=i < 200)
        stores.append(repo)
    made = time.perf_counter() - start
    big, twin = stores
    dry = _timed_gc(big, "--dry-run")
    real = _timed_gc(big)
    again = _timed_gc(big, "--dry-run")
    start = time.perf_counter()  # the floor: what removing the same files costs this file system
    rt = twin / ".loom" / ".runtime"
    subprocess.run(["rm", "-rf", str(rt / "logs"), str(rt / "receipts"), str(rt / "workspaces")], check=True)
    floor = time.perf_counter() - start
    print(f"loom gc on {runs:,} runs (both stores made in {made:.0f}s): --dry-run {dry:.2f}s, gc {real:.2f}s "
          f"(removes {runs - 50:,}; rm -rf of the same files on a twin store {floor:.2f}s, gc/rm {real / floor:.2f}x), "
          f"then --dry-run with nothing due {again:.3f}s")
    few = _git_repo(tmp / "gc-few", {".loom/workflow.yml": "version: v1\nstages: [s]\none:\n  stage: s\n"
                                     "  target: linux\n  script: [\"true\"]\n"})
    empty = _git_repo(tmp / "gc-empty", {".loom/workflow.yml": (few / ".loom/workflow.yml").read_text()})
    fakes = {fake_run(few / ".loom" / ".runtime", now - i * 60_000_000_000, snapshot=i < 5) for i in range(1, 50)}
    plans = []
    for _ in range(200):
        t = time.perf_counter()
        assert retention.plan(few / ".loom" / ".runtime", 50, 14 * 86400) == []
        plans.append(time.perf_counter() - t)
    print(f"retention plan with 49 finished runs, nothing due: {statistics.median(plans) * 1e6:.0f} us "
          "(in the writer, beside the run's start; the supervisor sends one message)")
    with_runs, without = [], []
    for _ in range(reps):  # each round removes the run it made, so every round has nothing due
        with_runs.append(_loom_run(few))
        without.append(_loom_run(empty))
        _forget_runs_but(few / ".loom" / ".runtime", fakes)
        shutil.rmtree(empty / ".loom" / ".runtime")
    a, b = statistics.median(with_runs), statistics.median(without)
    print(f"loom run of one `true` job: with 49 finished runs present {a:.3f}s, none {b:.3f}s "
          f"({(a - b) * 1000:+.0f} ms)")


def _forget_runs_but(runtime: Path, keep: set[str]) -> None:
    for folder in ("logs", "workspaces", "receipts", "runs"):
        for path in (runtime / folder).iterdir() if (runtime / folder).is_dir() else []:
            if path.name.split(".")[0] not in keep:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def _timed_gc(repo: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([*bench_run.LOOM, "gc", *args], cwd=repo, env=bench_run.ENV, capture_output=True, check=True)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    flags: dict[str, str] = {}
    for flag in ("--dir", "--only", "--runs"):
        if flag in argv:
            i = argv.index(flag)
            flags[flag] = argv[i + 1]
            argv = argv[:i] + argv[i + 2:]
    where, only, runs = flags.get("--dir"), flags.get("--only"), int(flags.get("--runs", "10000"))
    reps = int(argv[0]) if argv else 5
    env = dict(bench_run.ENV)
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        bench_run.ENV.pop(name, None)
    bench_run.ENV["PYTHONPATH"] = str(HERE)
    try:
        with tempfile.TemporaryDirectory(prefix="loom-bench-hosts-", dir=where) as tmp:
            print(f"repos in {tmp}, on {bench_run.filesystem_of(Path(tmp))}; python {sys.executable}")
            if only in (None, "jobserver"):
                bench_jobserver(Path(tmp), reps)
            if only in (None, "cpu"):
                bench_cpu(Path(tmp), reps)
            if only in (None, "gc"):
                bench_gc(Path(tmp), reps, runs)
    finally:
        bench_run.ENV.clear()
        bench_run.ENV.update(env)
    return 0
