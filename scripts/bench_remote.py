"""`python scripts/bench.py remote [REPS]`: `loom run --remote` on a 3-node Ray cluster on this
machine (issue 14), each figure next to a baseline measured in the same run. Needs root (the
cluster lives in a loopback-only network namespace, as in the tests: `tests/remote/cluster.py`)
and Ray (`pip install '.[ray]'`).

* 100 jobs each `true`, -j 2: `--remote` vs `--local`: the per-job dispatch overhead (target <= 20 ms)
* one remote job printing 3,000,000 lines (target <= 10 s), every line checked in order
* from `loom run --remote` to the first remote step starting, on a warm cluster (target <= 3 s)
* peak RSS of supervisor + gateway + writer during the 100-job run (target <= 300 MB)

The cluster: a head on 127.0.0.1 without CPUs (the machine `loom` runs on) and two nodes with two
CPUs each, in pools `a` and `b`. The nodes run the installed loomrun (nothing is uploaded); one
untimed warm-up run starts the nodes' first Ray workers. `loom` runs with the cluster's settings, as
in the tests: `RAY_AUTH_MODE=disabled` (a `~/.ray/auth_token` on the machine would otherwise turn
token auth on for the driver alone) and `RAY_TMPDIR` in the cluster's folder. Dispatch overhead is
per job past the run's start at -j 2: two jobs run at once, so one job's own delay is about twice it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_run import ENV, LOOM, PeakRss, receipt_of, repo_with  # noqa: E402

from tests.process.runner import numbered_lines  # noqa: E402
from tests.remote.cluster import Cluster  # noqa: E402


def run(cluster: Cluster, repo: Path, where: list[str], *args: str,
        sample: bool = False) -> tuple[float, PeakRss | None, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    env = {**ENV, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(cluster.temp)}
    proc = subprocess.Popen(cluster.cmd([*LOOM, "run", *where, "-q", *args]), cwd=repo, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = PeakRss(proc.pid) if sample else None
    out, err = proc.communicate()
    elapsed = time.perf_counter() - start
    if peak is not None:
        peak.stop()
    if proc.returncode != 0:
        raise SystemExit(f"loom run {' '.join(where)} failed:\n{err}")
    return elapsed, peak, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def bench_100(cluster: Cluster, tmp: Path, reps: int) -> None:
    """100 x `true` both ways; and 2 x `true` both ways, so that the per-run costs of a remote run
    (Ray's import and connection, one actor per slot started on the nodes) can be told from the
    per-job ones: the marginal cost of 98 more jobs."""
    def repo_of(n: int) -> Path:
        jobs = "".join(f"j{i:03d}:\n  stage: s\n  target: linux\n  script: [\"true\"]\n" for i in range(n))
        return repo_with(tmp / f"jobs{n}", "version: v1\nstages: [s]\n" + jobs)

    hundred, two = repo_of(100), repo_of(2)
    remote = ["--remote", cluster.address]
    times: dict[tuple[str, int], list[float]] = {}
    peaks = []
    for _ in range(reps):
        for where in ("local", "remote"):
            flags = ["--local"] if where == "local" else remote
            times.setdefault((where, 2), []).append(run(cluster, two, flags, "-j", "2")[0])
            elapsed, peak, _ = run(cluster, hundred, flags, "-j", "2", sample=where == "remote")
            times.setdefault((where, 100), []).append(elapsed)
            if peak is not None:
                peaks.append(peak.total)
    med = {k: statistics.median(v) for k, v in times.items()}
    lo, re_ = med[("local", 100)], med[("remote", 100)]
    lo_per = (lo - med[("local", 2)]) / 98 * 1000
    re_per = (re_ - med[("remote", 2)]) / 98 * 1000
    print(f"100 jobs `true`, -j 2: --remote {re_:.2f}s  --local {lo:.2f}s  "
          f"whole-run difference {(re_ - lo) / 100 * 1000:+.1f} ms/job")
    print(f"   per job past the run's start (100 jobs minus 2): --remote {re_per:.1f} ms  --local {lo_per:.1f} ms  "
          f"dispatch overhead {re_per - lo_per:+.1f} ms/job (target: <= 20 ms); 2 jobs: --remote "
          f"{med[('remote', 2)]:.2f}s --local {med[('local', 2)]:.2f}s")
    print(f"   peak RSS supervisor + gateway + writer: {max(peaks) / 2**20:.0f} MB (target <= 300 MB)")


def bench_3m(cluster: Cluster, tmp: Path, reps: int) -> None:
    repo = repo_with(tmp / "seq", "version: v1\nstages: [s]\nseq:\n  stage: s\n  target: linux\n"
                     "  runner_pool: a\n  script: [\"seq 1 3000000\"]\n")
    far, local = [], []
    for _ in range(reps):
        local.append(run(cluster, repo, ["--local"])[0])
        elapsed, _, result = run(cluster, repo, ["--remote", cluster.address])
        far.append(elapsed)
        step = Path(str(receipt_of(result)["logs_dir"])) / "jobs/seq/user/script/01"
        got = numbered_lines(step / "events.jsonl")
        assert got == 3_000_000, got
    print(f"3,000,000 lines from a node: --remote {statistics.median(far):.2f}s  "
          f"--local {statistics.median(local):.2f}s (target: <= 10 s); every line kept, in order")


def bench_first_step(cluster: Cluster, tmp: Path, reps: int) -> None:
    repo = repo_with(tmp / "first", "version: v1\nstages: [s]\none:\n  stage: s\n  target: linux\n"
                     "  script: [\"true\"]\n")
    waits = []
    for _ in range(reps):
        start = time.time()
        _, _, result = run(cluster, repo, ["--remote", cluster.address])
        events = Path(str(receipt_of(result)["logs_dir"])) / "jobs/one/user/script/01/events.jsonl"
        first = json.loads(events.read_text().splitlines()[0])
        waits.append(datetime.fromisoformat(first["ts"].replace("Z", "+00:00")).timestamp() - start)
    print(f"`loom run --remote` to the first remote step: {statistics.median(waits):.2f}s "
          f"(min {min(waits):.2f}s; target: <= 3 s on a warm cluster)")


def main(argv: list[str]) -> int:
    reps = int(argv[0]) if argv else 3
    cluster = Cluster()
    try:
        start = time.perf_counter()
        cluster.start_head()
        cluster.add_node("127.0.0.2", "a")
        cluster.add_node("127.0.0.3", "b")
        print(f"3-node cluster up in {time.perf_counter() - start:.1f}s; python {sys.executable}")
        with tempfile.TemporaryDirectory(prefix="loom-bench-remote-") as tmp:
            warm = repo_with(Path(tmp) / "warm", "version: v1\nstages: [s]\nw:\n  stage: s\n  target: linux\n"
                             "  script: [\"true\"]\n")
            run(cluster, warm, ["--remote", cluster.address])
            bench_first_step(cluster, Path(tmp), reps)
            bench_100(cluster, Path(tmp), reps)
            bench_3m(cluster, Path(tmp), reps)
    finally:
        left = cluster.stop()
        if left:
            print(f"Ray processes that needed a second kill: {left}")
    return 0
