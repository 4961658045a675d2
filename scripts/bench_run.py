"""`python scripts/bench.py run [REPS] [--dir FOLDER]`: the execution core's speed targets (issue 3),
each next to a baseline measured in the same run. FOLDER (default: the temp dir) holds the
benchmark repos; its filesystem is printed, because the writer creates ~15 files per job there
(measured on this machine: ext4 costs ~30 ms more than tmpfs for 100 jobs). On an ext4 without a
journal (this machine's root), creating a file right after many were deleted scans every inode
freed in its block group in the last minutes; the writer sidesteps that for the logs (see
`spread_children`), the few other files of a run do not.

* 100 jobs each `true`, one stage, --jobs 2  vs  100 `sh -c true` through `xargs -P2`
* one job printing 3,000,000 lines  vs  `seq > file` and a one-process Python JSON-per-line loop;
  every line must be in the step's events; supervisor and writer peak RSS sampled with psutil
* 1,000 jobs in a needs DAG: supervisor peak RSS
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

LOOM = [sys.executable, "-m", "loomrun"]
# As a user's shell would be: no LOOM_* settings, and byte-code caching on (some sandboxes set
# PYTHONDONTWRITEBYTECODE, which makes every start recompile loom from source).
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("LOOM_") and k != "PYTHONDONTWRITEBYTECODE"},
       "NO_COLOR": "1"}


# 100 jobs each `true`, one stage: the execution core's start-up benchmark (here, `ab`, `retention`).
HUNDRED_JOBS = "version: v1\nstages: [s]\n" + "".join(
    f"j{i:03d}:\n  stage: s\n  target: linux\n  script: [\"true\"]\n" for i in range(100))


def repo_with(root: Path, workflow: str) -> Path:
    (root / ".loom").mkdir(parents=True)
    (root / ".loom" / "workflow.yml").write_text(workflow)
    return root


def timed(cmd: list[str] | str, cwd: Path | None = None, shell: bool = False) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, shell=shell, check=True, env=ENV, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


class PeakRss:
    """Samples the RSS of the loom process (supervisor) and of its children that lead a process
    group of their own without leading a session (the writer, and a remote run's gateway: workers
    lead sessions, the fork server shares loom's group) while a run goes on: the peak of each alone
    (`supervisor`, `writer`: the largest such child) and of their sum at one instant (`total`)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.supervisor = 0
        self.writer = 0
        self.total = 0
        self.done = False
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.done:
            try:
                own = proc.memory_info().rss
                children = proc.children()
            except psutil.Error:
                time.sleep(0.01)
                continue
            self.supervisor = max(self.supervisor, own)
            total = own
            for child in children:
                try:
                    if os.getpgid(child.pid) == child.pid and os.getsid(child.pid) != child.pid:
                        rss = child.memory_info().rss
                        self.writer = max(self.writer, rss)
                        total += rss
                except (psutil.Error, ProcessLookupError):
                    continue
            self.total = max(self.total, total)
            time.sleep(0.01)

    def stop(self) -> None:
        self.done = True
        self.thread.join()


def run_loom(repo: Path, *args: str, sample: bool = True) -> tuple[float, PeakRss | None,
                                                                   subprocess.CompletedProcess[str]]:
    """One `loom run`; `sample`: watch the supervisor's and the writer's RSS meanwhile (a thread
    of this process reading /proc every 10 ms: it competes for the same 2 cores, so timings that
    the baseline does not pay for are taken without it)."""
    start = time.perf_counter()
    proc = subprocess.Popen([*LOOM, "run", "--local", "-q", *args], cwd=repo, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = PeakRss(proc.pid) if sample else None
    out, err = proc.communicate()
    elapsed = time.perf_counter() - start
    if peak is not None:
        peak.stop()
    if proc.returncode != 0:
        raise SystemExit(f"loom run failed:\n{err}")
    return elapsed, peak, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def receipt_of(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("receipt: "))
    return dict(json.loads(Path(line[len("receipt: "):]).read_text()))


def bench_100_jobs(tmp: Path, reps: int) -> None:
    repo = repo_with(tmp / "hundred", HUNDRED_JOBS)
    loom, base = [], []
    for _ in range(reps):
        base.append(timed("seq 100 | xargs -P2 -I{} sh -c true", shell=True))
        loom.append(run_loom(repo, "-j", "2", sample=False)[0])
    b, m = statistics.median(base), statistics.median(loom)
    print(f"100 jobs `true`, -j 2: loom {m:.3f}s  xargs -P2 {b:.3f}s  overhead {m - b:+.3f}s "
          f"({(m - b) / 100 * 1000:.1f} ms/job; target: at most +0.5s)")


def check_seq_lines(result: subprocess.CompletedProcess[str], n: int) -> int:
    """Every line 1..n of the `seq` job's step, in order, in its events; returns the summary's count."""
    step = Path(str(receipt_of(result)["logs_dir"])) / "jobs/seq/user/script/01"
    lines = int(json.loads((step / "summary.json").read_text())["output_lines"])
    got = 0
    expect = 1
    with open(step / "events.jsonl") as fh:
        for raw in fh:
            ev = json.loads(raw)
            if ev["type"] == "output":
                for ln in ev["lines"] if "lines" in ev else [ev["line"]]:
                    assert ln == str(expect), (ln, expect)
                    expect += 1
                    got += 1
    assert got == n == lines, (got, lines)
    return lines


def bench_3m_lines(tmp: Path, reps: int) -> None:
    repo = repo_with(tmp / "seq", "version: v1\nstages: [s]\nseq:\n  stage: s\n  target: linux\n"
                     "  script: [\"seq 1 3000000\"]\n")
    naive = ("import json,sys\nw=sys.stdout.write\nfor line in sys.stdin:\n"
             "    w(json.dumps({'type':'output','stream':'stdout','line':line.rstrip('\\n')})+'\\n')\n")
    loom, plain, loop = [], [], []
    peaks: list[PeakRss] = []
    lines = 0
    for _ in range(reps):
        plain.append(timed(f"seq 1 3000000 > {tmp}/seq.out", shell=True))
        loop.append(timed(f"seq 1 3000000 | {sys.executable} -c \"{naive}\" > {tmp}/naive.out", shell=True))
        elapsed, peak, result = run_loom(repo)
        loom.append(elapsed)
        assert peak is not None
        peaks.append(peak)
        lines = check_seq_lines(result, 3_000_000)
    m, p, n = statistics.median(loom), statistics.median(plain), statistics.median(loop)
    sup = max(pk.supervisor for pk in peaks) / 2**20
    wri = max(pk.writer for pk in peaks) / 2**20
    print(f"3,000,000 lines: loom {m:.2f}s  seq>file {p:.2f}s  naive JSON loop {n:.2f}s  "
          f"(loom/naive {m / n:.2f}x; targets: <= 3 s and faster than the loop); all {lines} lines in order")
    print(f"   peak RSS: supervisor {sup:.0f} MB + writer {wri:.0f} MB = {sup + wri:.0f} MB (target <= 100 MB)")


def bench_1000_dag(tmp: Path) -> None:
    parts = ["version: v1\nstages: [s]\n"]
    for i in range(1000):
        needs = [f"j{d:04d}" for d in (i - 1, i // 2, i // 3) if 0 <= d < i]
        need = f"  needs: [{', '.join(sorted(set(needs)))}]\n" if needs else "  needs: []\n"
        parts.append(f"j{i:04d}:\n  stage: s\n  target: linux\n{need}  script: [\"true\"]\n")
    repo = repo_with(tmp / "dag", "".join(parts))
    elapsed, peak, _ = run_loom(repo, "-j", "2")
    assert peak is not None
    print(f"1,000 jobs in a needs DAG: {elapsed:.2f}s, supervisor peak RSS {peak.supervisor / 2**20:.0f} MB "
          f"(target <= 150 MB), writer {peak.writer / 2**20:.0f} MB")


def filesystem_of(path: Path) -> str:
    """The mount holding `path` and its type, from /proc/mounts (the longest matching mount point)."""
    best, kind = "", "?"
    real = str(path.resolve())
    with open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            point = parts[1].replace("\\040", " ")
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, parts[2]
    return f"{kind} ({best})"


def main(argv: list[str]) -> int:
    """`run [REPS] [--dir FOLDER]`: FOLDER holds the benchmark repos (default: the temp dir).
    Their `.loom/.runtime` is where the writer creates ~15 files per job, so the figures depend on
    that filesystem: it is printed first."""
    where = None
    if "--dir" in argv:
        i = argv.index("--dir")
        where = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    reps = int(argv[0]) if argv else 3
    with tempfile.TemporaryDirectory(prefix="loom-bench-", dir=where) as tmp:
        print(f"benchmark repos in {tmp}, on {filesystem_of(Path(tmp))}; python {sys.executable}")
        bench_100_jobs(Path(tmp), reps)
        bench_3m_lines(Path(tmp), reps)
        bench_1000_dag(Path(tmp))
    return 0
