"""`python scripts/bench.py check [--jobs N] [--reps N]`: `loom check` and `loom compile` on a
generated workflow (templates, includes, needs), each as a whole process, next to `python -c pass`
measured in the same run. Prints medians and the ratio (target: check < 10x bare start-up)."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate(repo: Path, jobs: int) -> None:
    (repo / ".loom" / "templates").mkdir(parents=True)
    (repo / ".loom" / "templates" / "base.yml").write_text(
        ".base:\n  target: linux\n  variables: {BASE: b}\n  cache: {paths: [.cache], key: {prefix: p, files: [x]}}\n"
        ".docker:\n  extends: .base\n  image: alpine:3.20\n  limits: {memory: 1g, cpus: '1', pids: 256}\n")
    stages = [f"s{i}" for i in range(10)]
    lines = ["version: v1", f"stages: [{', '.join(stages)}]", "include:", "  - local: .loom/templates/base.yml",
             "variables: {ROOT: r}", "default:", "  timeout: 10m"]
    per_stage = jobs // len(stages)
    for i in range(jobs):
        stage = min(i // per_stage, len(stages) - 1)
        needs = [f"job{j}" for j in (i - per_stage, i - per_stage - 1) if j >= 0 and stage > 0]
        lines += [f"job{i}:", f"  extends: {'.docker' if i % 2 else '.base'}", f"  stage: {stages[stage]}",
                  f"  script: ['echo {i}', 'make step-{i}']", f"  variables: {{N: '{i}', M: '$N-x'}}"]
        if needs:
            lines.append(f"  needs: [{', '.join(needs)}]")
    (repo / ".loom" / "workflow.yml").write_text("\n".join(lines) + "\n")


def timed(cmd: list[str], cwd: Path, reps: int) -> float:
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
        samples.append(time.perf_counter() - start)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr.decode(errors='replace')}")
    return statistics.median(samples)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py check")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        generate(repo, args.jobs)
        bare = timed([sys.executable, "-c", "pass"], repo, args.reps)
        check = timed([sys.executable, "-m", "loomrun", "check"], repo, args.reps)
        compile_ = timed([sys.executable, "-m", "loomrun", "compile"], repo, args.reps)
    print(f"workflow: {args.jobs} jobs, templates + include + needs; median of {args.reps}")
    print(f"python -c pass : {bare * 1000:8.1f} ms")
    print(f"loom check     : {check * 1000:8.1f} ms  ({check / bare:.1f}x bare start-up; target < 10x)")
    print(f"loom compile   : {compile_ * 1000:8.1f} ms  ({compile_ / bare:.1f}x bare start-up)")
    return 0
