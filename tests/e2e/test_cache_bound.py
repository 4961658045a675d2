"""The cache size bound (spec §13) under two concurrent `loom run`s: their jobs restore each other's
entries while saves evict, every restored entry is checked whole by the job itself, and the store
ends within `runtime.cache.maxSize`. Real `loom` processes, real archives."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from loomrun.cache import evict
from tests.conftest import Repo
from tests.helpers import LOOM

MAX_SIZE = 400_000  # about two entries of 150 kB of random bytes

# Each job keeps to its own folder (the jobs of a run share one snapshot); the two runs share keys.
VERIFY = ('if [ -d "$D" ]; then (cd "$D" && sha256sum -c blob.sha256 >/dev/null) '
          '|| { echo "restored half an entry"; ls -l "$D"; exit 3; }; fi')
PRODUCE = ('mkdir -p "$D" && head -c 150000 /dev/urandom > "$D/blob.bin" '
           '&& (cd "$D" && sha256sum blob.bin > blob.sha256)')


def test_two_concurrent_runs_restoring_and_evicting_leave_whole_entries_within_max_size(
        repo: Repo, workflow: Callable[..., str]) -> None:
    jobs = {
        f"j{i}": {"script": [VERIFY, PRODUCE], "variables": {"D": f"c{i}"},
                  "cache": {"key": f"k{i}", "paths": [f"c{i}"]}}
        for i in range(4)
    }
    repo.write_workflow(workflow(jobs))
    repo.write({".loom/config.yml": f"runtime:\n  cache: {{maxSize: {MAX_SIZE}}}\n"})
    repo.commit()
    hits = 0
    for _ in range(3):
        runs = [subprocess.Popen([*LOOM, "run", "--local", "-q", "--jobs", "2"], cwd=repo.root, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        outs = [run.communicate(timeout=240) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outs
        for _, err in outs:
            logs = Path(json.loads(Path(err.split("receipt: ")[1].split()[0]).read_text())["logs_dir"])
            for job in jobs:
                section = json.loads((logs / "jobs" / job / "system" / "cache_restore" / "summary.json").read_text())
                hits += sum(c["status"] != "miss" for c in section["caches"])
        assert evict.store_size(repo.runtime / "cache") <= MAX_SIZE
    assert hits > 0  # the jobs did restore entries the other run was saving and evicting
