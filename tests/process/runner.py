"""Helpers for tests that run the real `loom` command on real workflows (process and e2e tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

LOOM = [sys.executable, "-m", "loomrun"]

# One script step (a YAML flow scalar) that starts a daemon whose parent exits at once, so that it
# becomes the child of the worker (a subreaper), then kills it and waits for it with `kill -0`:
# prints "gone after N looks", or exits 3 when a zombie still answers after 20 s.
KILLED_DAEMON_STEP = json.dumps(
    "sh -c 'sleep 300 </dev/null >/dev/null 2>&1 & echo $! > daemon.pid'; pid=$(cat daemon.pid); kill \"$pid\"; "
    "i=0; while kill -0 \"$pid\" 2>/dev/null; do i=$((i+1)); "
    "if [ $i -ge 400 ]; then echo 'still there after 20s'; exit 3; fi; sleep 0.05; done; echo \"gone after $i looks\"")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    repo: Path

    @property
    def receipt_path(self) -> Path:
        for line in self.stderr.splitlines():
            if line.startswith("receipt: "):
                return Path(line[len("receipt: "):])
        raise AssertionError(f"no receipt line in:\n{self.stderr}")

    @property
    def receipt(self) -> dict[str, Any]:
        return load(self.receipt_path)

    @property
    def logs_dir(self) -> Path:
        return Path(self.receipt["logs_dir"])

    def job_summary(self, job: str) -> dict[str, Any]:
        return load(self.logs_dir / "jobs" / job / "summary.json")

    def job_manifest(self, job: str) -> dict[str, Any]:
        return load(self.logs_dir / "jobs" / job / "manifest.json")

    def step_lines(self, job: str, index: int) -> list[str]:
        return output_lines(self.logs_dir / "jobs" / job / "user" / "script" / f"{index:02d}" / "events.jsonl")


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def output_lines(events: Path) -> list[str]:
    lines: list[str] = []
    for raw in events.read_text().splitlines():
        ev = json.loads(raw)  # every line must be complete JSON
        if ev["type"] == "output":
            lines.extend(ev["lines"] if "lines" in ev else [ev["line"]])
    return lines


def numbered_lines(events: Path) -> int:
    """How many output lines a step's events hold, checking they are 1, 2, 3, ... in order (a
    `seq` step), without keeping them all in memory."""
    expect = 1
    with open(events) as fh:
        for raw in fh:
            ev = json.loads(raw)
            if ev["type"] == "output":
                for line in ev["lines"] if "lines" in ev else [ev["line"]]:
                    assert line == str(expect), (line, expect)
                    expect += 1
    return expect - 1


def make_repo(root: Path, workflow: str, git: bool = True) -> Path:
    (root / ".loom").mkdir(parents=True, exist_ok=True)
    (root / ".loom" / "workflow.yml").write_text(textwrap.dedent(workflow).lstrip())
    if git:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run(["git", "add", "-A"], cwd=root, check=True)
        subprocess.run(["git", "commit", "-qm", "init"], cwd=root, check=True, env=env)
    return root


_NOT_PASSED = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "CI")


def loom_env(**extra: str) -> dict[str, str]:
    # Nothing of an enclosing loom run (the suite may itself run as a loom job): no LOOM_*, no CI_*,
    # and no jobserver in MAKEFLAGS (a loom run would borrow its slots from the enclosing one's).
    # No CI either: it is the suite's setting (skips fail), and would turn loom's live region off.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "CI_")) and k not in _NOT_PASSED}
    env.update({"LOOM_STOP_GRACE_S": "1", "NO_COLOR": "1"})
    env.update(extra)
    return env


def run_loom(repo: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> Result:
    proc = subprocess.run([*LOOM, *args], cwd=repo, capture_output=True, text=True, timeout=timeout,
                          env=env or loom_env())
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr, repo)


class Background:
    """`loom run` started in the background, for signals sent while jobs run."""

    def __init__(self, repo: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.repo = repo
        self.proc = subprocess.Popen([*LOOM, *args], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env or loom_env())

    def wait_for_file(self, path: Path, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 60) -> Result:
        out, err = self.proc.communicate(timeout=timeout)
        assert "Traceback" not in err, err
        return Result(self.proc.returncode, out, err, self.repo)


def run_processes(run_id: str) -> list[psutil.Process]:
    """Processes still carrying this run's id in their environment."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LOOM_RUN_ID") == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def writer_of(loom_pid: int, timeout: float = 30) -> psutil.Process:
    """The writer of the `loom` process `loom_pid`: the child that leads its own process group (workers
    lead their own session). Looked for until `timeout` (0: once)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            for child in psutil.Process(loom_pid).children():
                if os.getpgid(child.pid) == child.pid and os.getsid(child.pid) != child.pid:
                    return child
        except (psutil.Error, ProcessLookupError):
            pass
        if time.monotonic() >= deadline:
            raise AssertionError("no writer process found")
        time.sleep(0.002)


def processes_matching(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def walk_ladder(receipt: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """receipt -> pipeline manifest -> failing job manifest -> failing step events, by pointers only."""
    logs = Path(receipt["logs_dir"])
    pipeline = load(Path(receipt["pipeline_manifest_path"]))
    job_manifest = load(logs / pipeline["failing_job_manifest_path"])
    events = job_manifest.get("failing_step_events_path")
    return job_manifest, (logs / events if events else None)


def assert_logs_valid(result: Result) -> None:
    """Every document parses, every JSONL line is whole JSON with ts/seq/type/scope, seq runs from 1."""
    for path in result.logs_dir.rglob("*"):
        if path.suffix == ".json":
            load(path)
        elif path.suffix == ".jsonl":
            text = path.read_text()
            assert text == "" or text.endswith("\n"), f"half line at the end of {path}"
            for seq, raw in enumerate(text.splitlines(), start=1):
                ev = json.loads(raw)
                assert {"ts", "seq", "type", "scope"} <= ev.keys(), (path, ev)
                assert ev["seq"] == seq, (path, ev)


def sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
