"""Step output from the pipe to the terminal and the logs, through real `loom run`s: long lines cut
into bounded pieces (issue 11 item 10), a job's output before its end line and output times never
after `step_finished` (spec §11 Ordering), and a failed job's last lines under its failed line (§11)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.run_helpers import check_logs_dir, events, normal, step_doc, summary_block
from tests.process.runner import LOOM, Result, load, loom_env, make_repo, run_loom

MiB = 1 << 20


def pieces(path: Path) -> list[tuple[str, str, bool]]:
    """(stream, line, continued) of every output line of one events file, in order."""
    out: list[tuple[str, str, bool]] = []
    for ev in events(path):
        if ev["type"] == "output":
            lines = ev["lines"] if "lines" in ev else [ev["line"]]
            out.extend((ev["stream"], line, False) for line in lines[:-1])
            out.append((ev["stream"], lines[-1], bool(ev.get("continued"))))
            assert "continued" not in ev or ("line" in ev and ev["continued"] is True), ev
    return out


class WriterPeak:
    """The peak RSS of a `loom run`'s writer (its child in a process group of its own), sampled."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.done = False
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done:
            try:
                for child in self.proc.children():
                    if os.getpgid(child.pid) == child.pid and os.getsid(child.pid) != child.pid:
                        self.peak = max(self.peak, child.memory_info().rss)
            except (psutil.Error, ProcessLookupError):
                pass
            time.sleep(0.005)

    def stop(self) -> int:
        self.done = True
        self.thread.join()
        return self.peak


def test_a_line_without_newlines_is_written_in_bounded_pieces(tmp_path: Path) -> None:
    """96 MiB without a newline: pieces of at most 1 MiB marked `continued`, the writer's memory far
    below the line's size (it held the whole line, and several copies of it, before), the line
    counted once, whole again in `loom logs`, and on the terminal as `[job]` + `[job]+` lines."""
    size = 96 * MiB
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        long:
          stage: s
          target: linux
          script:
            - "echo before; head -c {size} /dev/zero | tr '\\\\0' x; echo; echo after"
            - "printf 'h\\\\303\\\\251'; head -c {MiB - 4} /dev/zero | tr '\\\\0' y; printf '\\\\303\\\\251tail'"
    """)
    proc = subprocess.Popen([*LOOM, "run", "--local", "--stream"], cwd=repo, env=loom_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = WriterPeak(proc.pid)
    out, err = proc.communicate(timeout=300)
    writer_rss = peak.stop()
    result = Result(proc.returncode, out.decode(), err.decode(), repo)
    assert result.code == 0, result.stderr[-2000:]
    assert 0 < writer_rss < 64 * MiB, writer_rss

    step1 = result.logs_dir / "jobs/long/user/script/01/events.jsonl"
    got = pieces(step1)
    assert got[0] == ("stdout", "before", False) and got[-1] == ("stdout", "after", False)
    long = got[1:-1]
    assert [c for _, _, c in long] == [True] * (len(long) - 1) + [False]
    assert len(long) == 96 and all(0 < len(text) <= MiB for _, text, _ in long)
    assert "".join(text for _, text, _ in long) == "x" * size
    assert step_doc(result, "long", 1)["output_lines"] == 3  # a line cut in pieces is one line

    # a piece is never cut inside a UTF-8 character (the 1 MiB mark falls inside the second "é")
    step2 = result.logs_dir / "jobs/long/user/script/02/events.jsonl"
    assert pieces(step2) == [("stdout", "h\u00e9" + "y" * (MiB - 4), True), ("stdout", "\u00e9tail", False)]
    check_logs_dir(result.logs_dir)

    logs = subprocess.run([*LOOM, "logs", result.receipt["run_id"], "--job", "long"], cwd=repo,
                          env=loom_env(), capture_output=True, text=True, timeout=120)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == f"before\n{'x' * size}\nafter\nh\u00e9{'y' * (MiB - 4)}\u00e9tail\n"

    streamed = [line for line in result.stderr.splitlines() if line.startswith("[long]")]
    assert streamed == ["[long] before", f"[long] {'x' * MiB}", *[f"[long]+ {'x' * MiB}"] * 95, "[long] after",
                        f"[long] h\u00e9{'y' * (MiB - 4)}", "[long]+ \u00e9tail"]


ORDER_PAIRS = 150


def test_a_jobs_output_comes_before_its_end_line_and_its_step_finished(tmp_path: Path) -> None:
    """The two-job case of issue 13 (two short jobs printing 3 lines each, at once), 150 times over
    in one run: a stage per pair, so each pair starts together at -j 2 and the next waits for it.
    Each job's lines print before its `passed` line, in order; when that line is read, the job's
    events file already holds its 3 lines and its `step_finished` (read at that moment, while the
    run goes on); and no output event is stamped after its step's `step_finished` (before: 5 runs
    in 15 printed a line late, and 66 of 201 step logs had a late output event)."""
    names = [f"p{n:03d}{side}" for n in range(ORDER_PAIRS) for side in "ab"]
    jobs = "".join(f"{name}:\n  stage: s{name[1:4]}\n  target: linux\n"
                   f"  script: [\"printf '1{name}\\\\n2{name}\\\\n3{name}\\\\n'\"]\n" for name in names)
    stages = ", ".join(f"s{n:03d}" for n in range(ORDER_PAIRS))
    repo = make_repo(tmp_path / "repo", f"version: v1\nstages: [{stages}]\n" + jobs, git=False)
    proc = subprocess.Popen([*LOOM, "run", "--local", "--stream", "-v", "-j", "2"], cwd=repo, env=loom_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    logs: Path | None = None
    seen_when_passed: dict[str, list[tuple[str, str]]] = {}
    try:
        for raw in proc.stderr:
            line = raw.rstrip("\n")
            lines.append(line)
            if line.startswith("logs ") and logs is None:
                logs = Path(line[len("logs "):])
            elif line.startswith('job "') and " passed in " in line:
                assert logs is not None, lines
                name = line.split('"')[1]
                # the writer wrote them before it answered, and only then was the line printed
                evs = [json.loads(x) for x in (logs / "jobs" / name / "user/script/01/events.jsonl")
                       .read_text().splitlines()]
                seen_when_passed[name] = [(e["type"], text) for e in evs if e["type"] in ("output", "step_finished")
                                          for text in e.get("lines") or [e.get("line", "")]]
        assert proc.wait(timeout=300) == 0, [line for line in lines if " failed" in line or "error" in line]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    late = []
    for name in names:
        mine = [n for n, line in enumerate(lines) if line.startswith(f"[{name}] ")]
        assert [lines[n] for n in mine] == [f"[{name}] {i}{name}" for i in (1, 2, 3)]
        ended = next(n for n, line in enumerate(lines) if line.startswith(f'job "{name}" passed in '))
        if mine[-1] > ended:
            late.append(name)
        got = seen_when_passed[name]
        assert [kind for kind, _ in got][-1:] == ["step_finished"] and \
            [text for kind, text in got if kind == "output"] == [f"{i}{name}" for i in (1, 2, 3)], (name, got)
        assert logs is not None
        evs = events(logs / "jobs" / name / "user/script/01/events.jsonl")
        finished = next(e["ts"] for e in evs if e["type"] == "step_finished")
        times = [e["ts"] for e in evs if e["type"] == "output"]
        assert times == sorted(times) and all(ts <= finished for ts in times), (name, evs)
    assert late == []
    receipt = load(Path(next(line for line in lines if line.startswith("receipt: "))[len("receipt: "):]))
    top = events(Path(receipt["events_jsonl_path"]))
    assert len([e for e in top if e["type"] == "step_finished"]) == len(names)


FAILING = """
version: v1
stages: [s]
default:
  target: linux
noisy:
  stage: s
  script:
    - echo first step
    - 'for i in $(seq 1 30); do echo "out $i"; done; printf "\\033[31mred\\033[0m\\tx\\r\\n"; echo "err 31" >&2; exit 3'
quiet:
  stage: s
  script: [echo fine]
sectional:
  stage: s
  secrets:
    SKIPPED: {ref: "env://LOOM_TEST_OUTPUT_UNSET_A", required: false}
    NEEDED: {ref: "env://LOOM_TEST_OUTPUT_UNSET_B"}
  script: [echo never]
"""


def expected_block(result: Result) -> list[str]:
    """The lines under `noisy`'s failed line: its failing step's last 20 lines, then the hint."""
    tail = [f"out {i}" for i in range(13, 31)] + ["red\tx", "err 31"]
    tail[-2] = "red" + " " * 5 + "x"  # escapes and the carriage return gone, the tab expanded
    return [f"    {line}" for line in tail] + [f"  logs: loom logs {result.receipt['run_id']} --job noisy"]


def section_tail(result: Result, job: str, section: str) -> list[str]:
    path = result.logs_dir / "jobs" / job / "system" / section / "events.jsonl"
    return [e["line"] for e in events(path) if e["type"] == "output"][-20:]


def test_a_failed_job_shows_its_last_lines_and_where_the_rest_is(tmp_path: Path) -> None:
    """stderr to a pipe: plain lines, not one escape byte, even though the step printed some."""
    repo = make_repo(tmp_path / "repo", FAILING)
    result = run_loom(repo, "run", "--local", "-j", "1")
    assert result.code == 1
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    lines = result.stderr.splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith('job "noisy" failed'))
    assert lines[at].endswith("(exit code 3)")
    assert lines[at + 1:at + 22] == expected_block(result)
    assert lines[at + 22] == 'job "quiet" started (host)'
    assert not any("first step" in line or "fine" in line for line in lines)  # passing output stays in the logs
    # a job that failed in a system section shows that section's last lines
    at = next(n for n, line in enumerate(lines) if line.startswith('job "sectional" failed'))
    shown = section_tail(result, "sectional", "secrets")
    assert shown, "the secrets section wrote no line to show"
    assert lines[at + 1:at + 2 + len(shown)] == [f"    {line}" for line in shown] + [
        f"  logs: loom logs {result.receipt['run_id']} --job sectional"]
    assert result.job_manifest("sectional")["failing_section"] == "secrets"
    # -q: only the status and the receipt
    quiet = run_loom(repo, "run", "--local", "-q")
    assert quiet.stderr.splitlines() == ["loom run failed", f"receipt: {quiet.receipt_path}"]


def run_in_tmux(repo: Path, tmp_path: Path, *args: str) -> tuple[int, list[str], str]:
    """`loom run --local ARGS` in a real terminal (a detached tmux pane, colour allowed): its exit
    code, the screen as a person reads it once the terminal has applied every escape (a live
    region, were there one, redrawn and gone), and the same screen with colours as escapes."""
    if shutil.which("tmux") is None:  # a laptop without it; scripts/test.sh installs it (CI=true: a failure)
        pytest.skip("tmux is not installed (scripts/test.sh installs it)")
    sock = f"loom-test-{os.getpid()}-{time.monotonic_ns()}"
    done = tmp_path / "exit-code"
    env = {k: v for k, v in loom_env().items() if k != "NO_COLOR"}
    script = tmp_path / "run.sh"
    script.write_text(f"cd {shlex.quote(str(repo))}\n{shlex.join([*LOOM, 'run', '--local', *args])}\n"
                      f"echo $? > {shlex.quote(str(done))}.tmp && mv {shlex.quote(str(done))}.tmp "
                      f"{shlex.quote(str(done))}\nexec sleep 600\n")
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-x", "200", "-y", "120", "sh", str(script)], env=env, check=True)
    try:
        deadline = time.monotonic() + 120
        while not done.exists():
            assert time.monotonic() < deadline, "loom run did not finish in the terminal"
            time.sleep(0.05)
        plain = subprocess.run([*tmux, "capture-pane", "-p", "-J"], capture_output=True, text=True, check=True).stdout
        styled = subprocess.run([*tmux, "capture-pane", "-p", "-e", "-J"], capture_output=True, text=True,
                                check=True).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    return int(done.read_text()), [line.rstrip() for line in plain.splitlines()], styled


def test_a_failed_job_shows_its_last_lines_on_a_terminal(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", FAILING)
    code, screen, styled = run_in_tmux(repo, tmp_path, "-j", "1")
    assert code == 1
    receipt_path = next(line for line in screen if line.startswith("receipt: "))[len("receipt: "):]
    receipt = load(Path(receipt_path))
    at = next(n for n, line in enumerate(screen) if line.startswith('job "noisy" failed'))
    tail = [f"out {i}" for i in range(13, 31)] + ["red" + " " * 5 + "x", "err 31"]
    assert screen[at + 1:at + 22] == [f"    {line}" for line in tail] + [
        f"  logs: loom logs {receipt['run_id']} --job noisy"]
    assert "\x1b[31mfailed" in styled  # a terminal: loom's colour is on,
    assert "\x1b[31mred" not in styled  # but the step's own escapes were not passed on
    table = summary_block(screen)  # the summary ends the run in a terminal as well
    assert normal(table[1:5]) == [
        "job        stage  provider  status  duration  failure",
        "noisy      s      host      failed     N.NNs  step_failed",
        "quiet      s      host      passed     N.NNs",
        "sectional  s      host      failed     N.NNs  secrets_error",
    ]
    assert table[5].startswith("wall time ") and table[6] == "1 warning:"
    after = screen.index(table[-1]) + 1
    assert screen[after:after + 2] == ["loom run failed", f"receipt: {receipt_path}"]


def test_job_output_events_and_lines_of_a_killed_long_line_are_kept(tmp_path: Path) -> None:
    """A step killed in the middle of a long line: the pieces written so far are in the events
    (the last one still `continued`), and `loom logs` prints what there is as one line."""
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        cut:
          stage: s
          target: linux
          timeout: 3s
          script:
            - "head -c {3 * MiB} /dev/zero | tr '\\\\0' z; sleep 30"
    """)
    result = run_loom(repo, "run", "--local", timeout=120)
    assert result.code == 1
    assert result.job_summary("cut")["failure_kind"] == "timeout"
    got = pieces(result.logs_dir / "jobs/cut/user/script/01/events.jsonl")
    assert [c for _, _, c in got] == [True, True, False]
    assert "".join(text for _, text, _ in got) == "z" * 3 * MiB
    logs = subprocess.run([*LOOM, "logs", result.receipt["run_id"], "--job", "cut"], cwd=repo, env=loom_env(),
                          capture_output=True, text=True, timeout=60)
    assert logs.stdout == "z" * 3 * MiB + "\n"
    json.dumps(result.receipt)
