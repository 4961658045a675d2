"""The jobserver (spec §13) with real GNU make (Debian 12's make 4.3) in real host jobs.

Every job runs plain `make` on a generated Makefile whose recipes append `start`/`end` lines with
nanosecond timestamps to one shared file; how many recipes ran at once is computed from those
lines alone (no wall-clock thresholds). A recipe's stamps lie inside its real run, so the figure
can only understate the concurrency: "at most N" is exact, "reaches N" is conservative.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from tests.conftest import Repo
from tests.helpers import LOOM, workflow

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")

MAKEFILE = textwrap.dedent("""\
    TARGETS := $(addprefix t,$(shell seq 1 $(N)))
    SLEEP ?= sleep $(NAP)
    all: $(TARGETS)
    $(TARGETS):
    \t@echo "start $(JOB) $@ $$(date +%s%N)" >> $(LOG); $(SLEEP); echo "end $(JOB) $@ $$(date +%s%N)" >> $(LOG)
    .PHONY: all $(TARGETS)
    """)
# What a shell that called loom could have set: the tests decide these themselves.
OUTSIDE = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES", "LOOM_JOBSERVER")


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in OUTSIDE}
    return {**base, **extra}


def make_job(log: Path, n: int, nap: float = 0.2, **more: object) -> dict[str, object]:
    """A job running plain `make` on MAKEFILE; JOB is its name in the log."""
    variables = {"LOG": str(log), "N": str(n), "NAP": str(nap), **dict(more.pop("variables", {}))}  # type: ignore[call-overload]
    return {"script": ["make -f $CI_PROJECT_DIR/stamps.mk JOB=$CI_JOB_NAME"], "variables": variables, **more}


def setup(repo: Repo, jobs: Mapping[str, Mapping[str, object]], stages: tuple[str, ...] = ("ci",)) -> None:
    repo.write_workflow(workflow(jobs, stages=stages))
    repo.write({"stamps.mk": MAKEFILE})
    repo.commit()


def loom(repo: Repo, *args: str, extra_env: Mapping[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOOM, "run", "--local", *args], cwd=repo.root, env=env(**(extra_env or {})),
                          capture_output=True, text=True, timeout=timeout, check=False)


def intervals(log: Path) -> list[tuple[str, int, int]]:
    """(job, start ns, end ns) of every recipe that finished; open ones end at +infinity."""
    starts: dict[tuple[str, str], int] = {}
    out: list[tuple[str, int, int]] = []
    for line in log.read_text().splitlines():
        kind, job, target, ns = line.split()
        if kind == "start":
            starts[(job, target)] = int(ns)
        else:
            out.append((job, starts.pop((job, target)), int(ns)))
    out.extend((job, ns, 1 << 62) for (job, _), ns in starts.items())
    return out


def most_at_once(spans: list[tuple[str, int, int]], job: str | None = None) -> int:
    """The largest number of recipes running at the same moment (of one job, or of all)."""
    mine = [(s, e) for j, s, e in spans if job in (None, j)]
    edges = sorted([(s, 1) for s, _ in mine] + [(e, -1) for _, e in mine])
    best = now = 0
    for _, step in edges:  # at equal times an end (-1) sorts first: touching spans do not overlap
        now += step
        best = max(best, now)
    return best


def test_one_make_job_uses_every_slot_and_loom_jobserver_off_runs_one_recipe_at_a_time(
        repo: Repo, tmp_path: Path) -> None:
    on, off = tmp_path / "on.log", tmp_path / "off.log"
    setup(repo, {"on": make_job(on, 12), "off": make_job(off, 6, variables={"LOOM_JOBSERVER": "off"},
                                                            needs=["on"])})
    res = loom(repo, "--jobs", "3")
    assert res.returncode == 0, res.stderr
    assert most_at_once(intervals(on)) == 3  # the budget is used, not only respected
    assert most_at_once(intervals(off)) == 1
    assert len(intervals(on)) == 12 and len(intervals(off)) == 6


def test_four_make_jobs_at_jobs_3_never_run_more_than_3_recipes_and_the_last_gets_the_freed_slots(
        repo: Repo, tmp_path: Path) -> None:
    log = tmp_path / "stamps.log"
    setup(repo, {"a": make_job(log, 8), "b": make_job(log, 10), "c": make_job(log, 12), "d": make_job(log, 30)})
    res = loom(repo, "--jobs", "3")
    assert res.returncode == 0, res.stderr
    spans = intervals(log)
    assert len(spans) == 60
    assert most_at_once(spans) <= 3
    assert most_at_once(spans, "d") == 3  # once a, b and c are done, d's make has all three


def later_gets_the_whole_pool(repo: Repo, victim: Path, later: Path) -> dict[str, Any]:
    """Run at --jobs 3: `victim` ends holding two slots (its implicit one + a token its make took),
    its recipes never finished; `later` still reaches 3; one token was lost and made again in a new
    generation. The receipt."""
    res = loom(repo, "--jobs", "3", extra_env={"LOOM_STOP_GRACE_S": "1"})
    assert res.returncode == 0, res.stderr
    held = intervals(victim)
    assert len(held) == 2 and all(end == 1 << 62 for _, _, end in held)
    assert most_at_once(intervals(later)) == 3
    receipt: dict[str, Any] = json.loads(Path(res.stderr.split("receipt: ")[1].split()[0]).read_text())
    assert receipt["jobserver"] == {"source": "own", "slots": 3, "generations": 2, "lost_tokens": 1}
    return receipt


def test_a_job_killed_holding_extra_slots_does_not_shrink_the_pool(repo: Repo, tmp_path: Path) -> None:
    """`victim` times out while its make holds an extra token. Its recipes ignore TERM, so make (which
    gives its tokens back when TERM lets its children end) is still waiting when the grace runs out,
    and dies by SIGKILL holding it. `bystander` uses the same fifo meanwhile, so the loss can only be
    settled when it ends; `later` must get all three slots then."""
    victim, later = tmp_path / "victim.log", tmp_path / "later.log"
    setup(repo, {
        "victim": make_job(victim, 30, timeout="3s", allow_failure=True,
                           variables={"SLEEP": "trap '' TERM; sleep 60"}),
        "bystander": {"script": ["sleep 7"]},
        "later": make_job(later, 40, nap=0.3, needs=["victim"]),
    })
    later_gets_the_whole_pool(repo, victim, later)


def test_a_job_whose_worker_crashed_holding_extra_slots_does_not_shrink_the_pool(repo: Repo, tmp_path: Path) -> None:
    """The same shape as above, but nobody stops `victim`: its worker is SIGKILLed (a crash) once
    its make runs two recipes (its implicit slot + 1 token). The supervisor sweeps the job's
    processes; the recipes ignore TERM, so the make dies by SIGKILL holding the token; `later` must
    still get all three slots."""
    victim, later = tmp_path / "victim.log", tmp_path / "later.log"
    crash = (f'make -f $CI_PROJECT_DIR/stamps.mk JOB=$CI_JOB_NAME & '
             f'until [ "$(grep -c "^start victim " {victim})" -ge 2 ]; do sleep 0.05; done; kill -KILL $PPID; wait')
    setup(repo, {
        "victim": {**make_job(victim, 30, allow_failure=True, variables={"SLEEP": "trap '' TERM; sleep 60"}),
                   "script": [crash]},
        "bystander": {"script": ["sleep 5"]},
        "later": make_job(later, 40, nap=0.3, needs=["victim"]),
    })
    receipt = later_gets_the_whole_pool(repo, victim, later)
    assert {j["id"]: j["failure_kind"] for j in receipt["jobs"]}["victim"] == "worker_crashed"


def test_a_make_j4_recipe_running_loom_keeps_all_recipes_within_4(repo: Repo, tmp_path: Path) -> None:
    log = tmp_path / "stamps.log"
    setup(repo, {"a": make_job(log, 20), "b": make_job(log, 20)})
    outer = tmp_path / "outer.mk"
    loom_cmd = " ".join(LOOM)
    outer.write_text(f"ci:\n\t+{loom_cmd} run --local -q\n")  # `+`: make 4.3 hands its pipe to this recipe
    res = subprocess.run(["make", "-j4", "-f", str(outer), "ci"], cwd=repo.root, env=env(), capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    spans = intervals(log)
    assert len(spans) == 40
    assert 3 <= most_at_once(spans) <= 4  # make's 4 slots, borrowed one at a time by loom


def test_loom_under_a_make_4_4_parent_takes_its_slots_from_the_fifo(repo: Repo, tmp_path: Path) -> None:
    """What make >= 4.4 (not in Debian 12) hands a recipe: `-j3 --jobserver-auth=fifo:PATH`, the
    fifo holding 2 tokens (the recipe's own slot is the third). The fifo is made here by hand and
    kept open as make would. loom's own `--jobs 8` would let the two makes run far more: the outside
    pool is what bounds them; at least two at once shows loom borrowed from it, and every token is
    back in the fifo afterwards."""
    log = tmp_path / "stamps.log"
    setup(repo, {"a": make_job(log, 20), "b": make_job(log, 20)})
    fifo = tmp_path / "make-4.4-fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, b"++")
        res = loom(repo, "--jobs", "8", extra_env={"MAKEFLAGS": f" -j3 --jobserver-auth=fifo:{fifo}"})
        left = os.read(fd, 16)
    finally:
        os.close(fd)
    assert res.returncode == 0, res.stderr
    spans = intervals(log)
    assert len(spans) == 40
    assert 2 <= most_at_once(spans) <= 3
    assert left == b"++"  # what loom borrowed went back, no more, no less
    receipt = json.loads(Path(res.stderr.split("receipt: ")[1].split()[0]).read_text())
    assert receipt["jobserver"]["source"] == f"make (MAKEFLAGS --jobserver-auth=fifo:{fifo})"


def test_tokens_a_killed_job_borrowed_from_make_go_back_to_make(repo: Repo, tmp_path: Path) -> None:
    """loom under `make -j3` borrows for its job's make; the job is SIGKILLed holding them (its recipes
    ignore TERM). make 4.3 counts its tokens when it exits and complains of any missing."""
    log = tmp_path / "victim.log"
    setup(repo, {"victim": make_job(log, 30, timeout="3s", variables={"SLEEP": "trap '' TERM; sleep 60"})})
    outer = tmp_path / "outer.mk"
    outer.write_text(f"ci:\n\t+-{' '.join(LOOM)} run --local\n")  # `-`: the run fails; make goes on to exit
    res = subprocess.run(["make", "-j3", "-f", str(outer), "ci"], cwd=repo.root,
                         env=env(LOOM_STOP_GRACE_S="1"), capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    held = intervals(log)
    assert len(held) == 3 and all(end == 1 << 62 for _, _, end in held)  # killed holding make's 3 slots
    assert "INTERNAL" not in res.stderr and "jobserver tokens" not in res.stderr, res.stderr
    receipt = json.loads(Path(res.stderr.split("receipt: ")[1].split()[0]).read_text())
    assert receipt["jobserver"]["lost_tokens"] == 2 and receipt["jobserver"]["source"].startswith("make (")


# t1 of job a (first run) waits, holding its job's slot, until the log shows c's t1 started, and
# c's t1 (second run) until it shows a's: so the two runs overlap by construction (120 s at most,
# then the recipe fails its run). Only two recipes wait: a third token always stays in circulation
# (a borrowing run keeps one spare in its own fifo while its jobs run, so a wait for a third
# recipe could starve).
RENDEZVOUS = textwrap.dedent("""\
    for i in $(seq 1200); do
      grep -q "^start $2 t1 " "$1" && exit 0
      sleep 0.1
    done
    echo "the two runs never overlapped" >&2; exit 1
    """)


def test_two_concurrent_runs_on_one_host_fifo_pool_overlap_use_it_all_and_stay_within_it(
        tmp_path: Path, repo: Repo) -> None:
    """One run gets the pool from LOOM_JOBSERVER, the other from `runtime.jobserver` in its config.
    They overlap by construction (RENDEZVOUS), and the recipes of the two runs together reach the
    pool's three at some moment, never more."""
    log = tmp_path / "stamps.log"

    def meet(other: str) -> dict[str, str]:
        return {"SLEEP": f"if [ $$@ = t1 ]; then sh rendezvous.sh {log} {other}; else sleep 0.2; fi"}

    repo.write({"rendezvous.sh": RENDEZVOUS})
    setup(repo, {"a": make_job(log, 15, variables=meet("c")), "b": make_job(log, 15)})
    second = tmp_path / "second"
    shutil.copytree(repo.root, second)
    helpers.write_workflow(second, workflow({"c": make_job(log, 15, variables=meet("a")), "d": make_job(log, 15)}))
    pool = f"fifo:{tmp_path / 'pool'}"
    (second / ".loom" / "config.yml").write_text(f'runtime:\n  jobserver: "{pool}"\n')
    runs = [subprocess.Popen([*LOOM, "run", "--local", "-q", "--jobs", "3"], cwd=root, env=env(**more),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for root, more in ((repo.root, {"LOOM_JOBSERVER": pool}), (second, {}))]
    outs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    spans = intervals(log)
    assert len(spans) == 60
    stamps = {tuple(line.split()[:3]): int(line.split()[3]) for line in log.read_text().splitlines()}
    a1, c1 = ((stamps[("start", j, "t1")], stamps[("end", j, "t1")]) for j in "ac")
    assert a1[0] < c1[1] and c1[0] < a1[1]  # the runs overlapped (a recipe of each ran at once)
    assert most_at_once(spans) == 3  # four jobs of two runs, three tokens on the host, all used at once
    receipts = [json.loads(Path(err.split("receipt: ")[1].split()[0]).read_text()) for _, err in outs]
    assert [r["jobserver"]["source"] for r in receipts] == [f"host {pool}"] * 2, receipts


def test_jobserver_settings_outside_loom_and_a_bad_job_setting(repo: Repo, tmp_path: Path) -> None:
    """MAKEFLAGS naming fds loom's process does not have (a make rule without `+`): make's own rule,
    one job at a time, said in a warning. `runtime.jobserver: off`: the words go from the jobs'
    MAKEFLAGS (their fds are not open there either). A job's LOOM_JOBSERVER other than on/off: one line."""
    show = {"script": ['echo "[$MAKEFLAGS]"', 's=$(date +%s%N); sleep 0.5; echo "span $s $(date +%s%N)"']}
    setup(repo, {"a": show, "b": show})
    dead = {"MAKEFLAGS": " -j4 --jobserver-auth=98,99"}
    serial = loom(repo, "--jobs", "2", "--stream", extra_env=dead)
    assert serial.returncode == 0, serial.stderr
    assert ("warning: the jobserver in MAKEFLAGS is unusable: --jobserver-auth=98,99 names no open pipe in loom's "
            "process; running one job at a time") in serial.stderr
    (a0, a1), (b0, b1) = ([int(x) for x in line.split()[2:]] for line in sorted(serial.stderr.splitlines())
                          if " span " in line)
    assert a1 <= b0 or b1 <= a0  # one after the other
    off = loom(repo, "--jobs", "2", "--stream", extra_env={**dead, "LOOM_JOBSERVER": "off"})
    assert off.returncode == 0, off.stderr
    assert "[a] [-j4]" in off.stderr and "[b] [-j4]" in off.stderr
    repo.write_workflow(workflow({"a": {"script": ["true"], "variables": {"LOOM_JOBSERVER": "sometimes"}}}))
    bad = loom(repo)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == \
        'loom run: job "a": variables: LOOM_JOBSERVER must be "on" or "off", not "sometimes"'


PROBE = textwrap.dedent("""\
    import fcntl, json, os, stat, sys
    flags = os.environ.get("MAKEFLAGS")
    out = {"makeflags": flags, "fifo": None, "fds": None}
    for word in (flags or "").split():
        value = word.partition("--jobserver-auth=")[2]
        if value.startswith("fifo:"):
            st = os.stat(value[5:])
            out["fifo"] = [stat.S_ISFIFO(st.st_mode), st.st_ino]
        elif value:
            out["fds"] = [[stat.S_ISFIFO(os.fstat(fd).st_mode), os.fstat(fd).st_ino,
                           fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE] for fd in map(int, value.split(","))]
    with open(sys.argv[1], "w") as fh:
        json.dump(out, fh)
    """)


def test_a_host_job_sees_both_jobserver_forms_with_the_fds_open_and_off_removes_them(
        repo: Repo, tmp_path: Path) -> None:
    """Spec §13 end to end: a host job's MAKEFLAGS is `-jN --jobserver-auth=fifo:PATH
    --jobserver-auth=R,W` (the job's own flags kept), R and W are open in the job's processes,
    read and write ends of that very fifo; `-j` is bare when the pool is borrowed (its size is not
    loom's to say); a job with `LOOM_JOBSERVER: "off"` keeps only its own flags."""
    import sys

    def probe(name: str, **variables: str) -> dict[str, object]:
        return {"script": [f"{sys.executable} probe.py {tmp_path / name}.json"],
                "variables": {"MAKEFLAGS": "-k", **variables}}

    repo.write({"probe.py": PROBE})
    setup(repo, {"on": probe("on"), "off": probe("off", LOOM_JOBSERVER="off")})
    for how, extra in (("own", {}), ("host", {"LOOM_JOBSERVER": f"fifo:{tmp_path / 'pool'}"})):
        res = loom(repo, "--jobs", "3", extra_env=extra)
        assert res.returncode == 0, res.stderr
        on, off = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("on", "off"))
        assert off == {"makeflags": "-k", "fifo": None, "fds": None}
        words = on["makeflags"].split()
        assert words[0] == ("-j3" if how == "own" else "-j") and words[3:] == ["-k"], words
        assert words[1].startswith("--jobserver-auth=fifo:") and words[2].startswith("--jobserver-auth="), words
        fifo = words[1].removeprefix("--jobserver-auth=fifo:")
        assert re.fullmatch(rf"{re.escape(str(repo.runtime))}/tmp/loom-run-local-\d+/jobserver/gen-0", fifo), fifo
        (r_fifo, r_ino, r_mode), (w_fifo, w_ino, w_mode) = on["fds"]
        assert on["fifo"] == [True, r_ino] and r_fifo and w_fifo and r_ino == w_ino  # one fifo, both ways
        assert (r_mode, w_mode) == (os.O_RDWR, os.O_WRONLY)
