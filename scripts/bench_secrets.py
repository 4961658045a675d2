"""`python scripts/bench.py secrets [REPS]`: what a vault costs a run (spec §7.1, issue 12).

A KeePass database made with KeePass's default key derivation (Argon2, 64 MiB, ~1 s per open), and
four workflows, each run REPS times (medians), all in the same session on this machine:

* 1 job reading one keepass secret              (the single-job run the issue compares against)
* 20 jobs, each reading one keepass secret      (the case to measure)
* 20 jobs reading nothing                        (the jobs' own cost, without any vault)
* one open of the database in this process       (what each job would pay if it opened the vault)

Each run's open count comes from the broker, as reported in every job's `secrets` section.
Needs `pip install 'loomrun[keepass]'`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOM = [sys.executable, "-m", "loomrun"]
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("LOOM_") and k != "PYTHONDONTWRITEBYTECODE"},
       "NO_COLOR": "1", "KP_PASSWORD": "bench-password"}
REF = "keepass://bench#services/app/deploy:password"


def workflow(jobs: int, secret: bool) -> str:
    text = "version: v1\nstages: [ci]\n"
    for i in range(jobs):
        text += f"j{i:02d}:\n  stage: ci\n  target: linux\n  script: ['test -s \"$PW\" || test -z \"$PW\"']\n"
        if secret:
            text += f"  secrets:\n    PW: {{ref: {json.dumps(REF)}}}\n"
    return text


def make_repo(root: Path, text: str, vault: Path) -> Path:
    (root / ".loom").mkdir(parents=True)
    (root / ".loom" / "workflow.yml").write_text(text)
    alias = f"bench: {{path: {json.dumps(str(vault))}, passwordEnv: KP_PASSWORD}}"
    (root / ".loom" / "config.yml").write_text(f"providers:\n  keepass:\n    aliases:\n      {alias}\n")
    return root


def run(repo: Path) -> tuple[float, int]:
    start = time.perf_counter()
    out = subprocess.run([*LOOM, "run", "--local", "-q", "-j", "2"], cwd=repo, env=ENV, capture_output=True,
                         text=True, check=False)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"loom run failed:\n{out.stderr}")
    receipt = json.loads(Path(out.stderr.split("receipt: ", 1)[1].split()[0]).read_text())
    opens = 0
    for job in (Path(receipt["logs_dir"]) / "jobs").iterdir():
        events = job / "system" / "secrets" / "events.jsonl"
        if events.exists():
            opens += events.read_text().count("(opened for this run;")
    return elapsed, opens


def main(argv: list[str]) -> int:
    reps = int(argv[0]) if argv else 3
    from pykeepass import PyKeePass, create_database

    with tempfile.TemporaryDirectory(prefix="loom-bench-secrets-") as tmp:
        root = Path(tmp)
        vault = root / "bench.kdbx"
        kp = create_database(str(vault), password=ENV["KP_PASSWORD"])
        kp.add_entry(kp.add_group(kp.add_group(kp.root_group, "services"), "app"), "deploy", "u", "v4lue-bench")
        kp.save()
        start = time.perf_counter()
        PyKeePass(str(vault), password=ENV["KP_PASSWORD"])
        one_open = time.perf_counter() - start
        repos = {"1 job, keepass": make_repo(root / "one", workflow(1, True), vault),
                 "20 jobs, keepass": make_repo(root / "twenty", workflow(20, True), vault),
                 "20 jobs, no secret": make_repo(root / "plain", workflow(20, False), vault)}
        times: dict[str, list[float]] = {name: [] for name in repos}
        opens: dict[str, set[int]] = {name: set() for name in repos}
        for _ in range(reps):
            for name, repo in repos.items():
                elapsed, count = run(repo)
                times[name].append(elapsed)
                opens[name].add(count)
        med = {name: statistics.median(values) for name, values in times.items()}
        print(f"one open of the database (Argon2, KeePass defaults), in-process: {one_open:.2f}s")
        for name in repos:
            print(f"{name:20s} median {med[name]:.2f}s over {reps} runs; vault opens per run: "
                  f"{sorted(opens[name])}")
        extra = med["20 jobs, keepass"] - med["20 jobs, no secret"]
        print(f"20 keepass jobs vs 1 keepass job: {med['20 jobs, keepass'] / med['1 job, keepass']:.2f}x "
              f"({med['20 jobs, keepass'] - med['1 job, keepass']:+.2f}s); vs 20 jobs without a secret: "
              f"{extra:+.2f}s (one open: {one_open:.2f}s; opening per job would add ~{19 * one_open:.1f}s more)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
