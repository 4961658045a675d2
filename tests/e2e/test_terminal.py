"""What a person sees of `loom run` (spec §11): the live region in a real pseudo-terminal, the plain
lines everywhere else (not one escape byte), the summary table with the wall time and the critical
path, and warnings repeated under it. Real `loom` processes; the pty is a real one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.ptyrun import run_in_pty, screen_of
from tests.e2e.run_helpers import normal, summary_block, terminal
from tests.e2e.test_step_output import FAILING
from tests.process.runner import LOOM, loom_env, make_repo, run_loom

COUNTS = re.compile(r"(\d+) running \u00b7 (\d+) passed \u00b7 (\d+) failed(?: \u00b7 \d+ \w+)* \u00b7 (\d+) pending")

STEPS = """
    version: v1
    stages: [a, b]
    default:
      target: linux
    slow:
      stage: a
      script: ["echo one", "sleep 2", "echo three"]
    quick:
      stage: a
      script: ["true"]
    after:
      stage: b
      script: ["echo after"]
"""


def frame_lines(text: str) -> list[str]:
    """Every line the terminal was sent, control sequences taken as line breaks."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "\n", text).replace("\r", "").split("\n")


@pytest.fixture(scope="module")
def steps_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("live") / "repo", STEPS)


def test_live_region_appears_is_redrawn_and_is_gone_at_the_end(steps_repo: Path) -> None:
    run = run_in_pty(["run", "--local", "-j", "2"], steps_repo)
    assert run.code == 0, run.raw.decode()
    text = run.raw.decode()
    assert "\x1b[" in text  # drawn with cursor movements, not plain lines
    frames = frame_lines(text)
    # a line per running job: name, provider, current step n/N, elapsed seconds
    assert any(re.fullmatch(r"  slow\s+host\s+step 2/3\s+[1-9]\d*s", line) for line in frames), frames
    counts = [tuple(map(int, m.groups())) for m in COUNTS.finditer(text)]
    assert (1, 1, 0, 1) in counts, counts  # slow running, quick passed, after pending
    assert len(counts) >= 3 and len(set(counts)) >= 2, counts  # redrawn as the run went on
    # at most 10 frames a second, counted over the whole run
    assert len(counts) <= 10 * run.seconds + 2, (len(counts), run.seconds)
    screen = screen_of(run.raw)
    assert not any(COUNTS.search(line) or "step " in line for line in screen), screen
    table = summary_block(screen)
    assert normal(screen[: screen.index("")]) == [  # no `started` lines: running jobs were the region
        'job "quick" passed in N.NNs',
        'job "slow" passed in N.NNs',
        'job "after" passed in N.NNs',
    ]
    assert normal(table[1:-1]) == [
        "job    stage  provider  status  duration  failure",
        "slow   a      host      passed     N.NNs",
        "quick  a      host      passed     N.NNs",
        "after  b      host      passed     N.NNs",
    ]
    assert re.fullmatch(r"wall time \d+\.\d\ds; critical path: slow \(\d+\.\d\ds\) -> after \(\d+\.\d\ds\)",
                        table[-1]), table
    receipt = run_loom_receipt(screen)
    assert screen[-2:] == ["loom run passed", f"receipt: {receipt}"]


def run_loom_receipt(screen: list[str]) -> str:
    return next(line[len("receipt: "):] for line in screen if line.startswith("receipt: "))


@pytest.mark.parametrize("env", [{"TERM": "dumb"}, {"CI": "true"}], ids=["term-dumb", "ci"])
def test_plain_lines_are_the_same_in_a_pipe_and_with_term_dumb_or_in_ci(steps_repo: Path,
                                                                       env: dict[str, str]) -> None:
    """A real terminal, but TERM=dumb or CI=true (spec §11: "pipe, file, CI"): the plain lines."""
    piped = run_loom(steps_repo, "run", "--local", "-j", "2")
    assert piped.code == 0, piped.stderr
    assert "\x1b" not in piped.stderr
    dumb = run_in_pty(["run", "--local", "-j", "2"], steps_repo, env=env, color=True)
    assert dumb.code == 0
    assert b"\x1b" not in dumb.raw  # not one escape byte, colours included
    lines = dumb.raw.decode().replace("\r\n", "\n").splitlines()
    for seen in (lines, piped.stderr.splitlines()):
        plain = [line for line in normal(seen) if not line.startswith(("receipt: ", "wall time "))]
        assert plain[:6] == [
            'job "slow" started (host)',
            'job "quick" started (host)',
            'job "quick" passed in N.NNs',
            'job "slow" passed in N.NNs',
            'job "after" started (host)',
            'job "after" passed in N.NNs',
        ]
        assert plain[-1] == "loom run passed"
        assert "job    stage  provider  status  duration  failure" in plain


def test_no_live_region_with_stream_or_quiet(steps_repo: Path) -> None:
    streamed = run_in_pty(["run", "--local", "--stream"], steps_repo)
    assert streamed.code == 0
    text = streamed.raw.decode()
    assert "[after] after" in text and 'job "after" started (host)' in text
    assert not COUNTS.search(text) and "\x1b[" not in text
    lines = text.replace("\r\n", "\n").splitlines()
    assert normal(summary_block(lines)[1:-1]) == [  # the summary ends a --stream run too
        "job    stage  provider  status  duration  failure",
        "slow   a      host      passed     N.NNs",
        "quick  a      host      passed     N.NNs",
        "after  b      host      passed     N.NNs",
    ]
    assert lines[-2] == "loom run passed"
    quiet = run_in_pty(["run", "--local", "-q"], steps_repo)
    assert quiet.code == 0
    assert quiet.raw.decode().replace("\r\n", "\n").splitlines()[0] == "loom run passed"


def test_live_region_on_a_hundred_jobs_in_a_small_terminal(tmp_path: Path) -> None:
    jobs = "".join(f"j{i:03d}:\n  stage: s\n  target: linux\n  script: [\"true\", \"true\"]\n" for i in range(100))
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [s]\n" + jobs)
    run = run_in_pty(["run", "--local", "-j", "8"], repo, rows=8, cols=60, color=True)
    assert run.code == 0, run.raw.decode()
    text = run.raw.decode()
    assert re.search(r"\.\.\. and \d+ more running", text), text  # 8 running jobs do not fit in 8 rows
    counts = [tuple(map(int, m.groups())) for m in COUNTS.finditer(re.sub(r"\x1b\[\d*m", "", text))]
    assert counts and len(counts) <= 10 * run.seconds + 2, (len(counts), run.seconds)
    screen = screen_of(run.raw)
    passed = [line for line in screen if re.fullmatch(r'job "j\d{3}" passed in \d+\.\d\ds', line)]
    assert len(passed) == 100
    table = summary_block(screen)
    assert len(table) == 1 + 1 + 100 + 1
    assert screen[-2] == "loom run passed"


def test_summary_sorts_by_start_and_names_the_critical_path(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [build, test, ship]
        default:
          target: linux
        compile:
          stage: build
          script: ["sleep 0.3"]
        docs:
          stage: build
          script: ["true"]
        unit:
          stage: test
          needs: [compile]
          script: ["sleep 0.3"]
        flaky:
          stage: test
          needs: [docs]
          allow_failure: true
          script: ["exit 2"]
        broken:
          stage: test
          needs: [docs]
          script: ["exit 5"]
        package:
          stage: ship
          needs: [unit]
          script: ["true"]
        publish:
          stage: ship
          needs: [broken]
          script: ["true"]
    """)
    result = run_loom(repo, "run", "--local", "-j", "1")
    assert result.code == 1
    lines = result.stderr.splitlines()
    table = summary_block(lines)
    assert normal(table[1:-1]) == [
        "job      stage  provider  status            duration  failure",
        "compile  build  host      passed               N.NNs",
        "docs     build  host      passed               N.NNs",
        "unit     test   host      passed               N.NNs",
        "flaky    test   host      failed (allowed)     N.NNs  step_failed",
        "broken   test   host      failed               N.NNs  step_failed",
        "package  ship   host      passed               N.NNs",
        "publish  ship   host      skipped                  -  dependency_failed",
    ]
    # -j 1: package ran last; it waited for unit, which waited for compile
    assert re.fullmatch(r"wall time \d+\.\d\ds; critical path: compile \(0\.\d\ds\) -> unit \(0\.\d\ds\) "
                        r"-> package \(\d\.\d\ds\)", table[-1]), table[-1]
    assert lines[-3:-1] == ["loom run failed", f"receipt: {result.receipt_path}"]
    # the rest of the terminal is the plain lines of before
    assert terminal(result)[0] == 'job "compile" started (host)'


def test_quiet_has_no_summary(steps_repo: Path) -> None:
    result = run_loom(steps_repo, "run", "--local", "-q")
    assert result.stderr.splitlines() == ["loom run passed", f"receipt: {result.receipt_path}"]


def test_warnings_reach_the_terminal_and_the_summary(tmp_path: Path) -> None:
    # A workflow warning (the workers' warnings, `m.Warned`, take the same path: Terminal.warning)
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s, empty]
        default:
          target: linux
        one:
          stage: s
          script: ["true"]
    """)
    piped = run_loom(repo, "run", "--local")
    assert piped.code == 0, piped.stderr
    lines = piped.stderr.splitlines()
    assert lines[0] == 'warning: stage "empty" has no jobs'
    assert summary_block(lines)[-2:] == ["1 warning:", '  stage "empty" has no jobs']
    live = run_in_pty(["run", "--local"], repo)
    screen = screen_of(live.raw)
    assert screen[0] == 'warning: stage "empty" has no jobs'
    assert summary_block(screen)[-2:] == ["1 warning:", '  stage "empty" has no jobs']


def test_an_interrupted_run_ends_with_the_summary(tmp_path: Path) -> None:
    """^C typed in the terminal while a job runs: the region goes, the canceled jobs are said, and
    the summary table still ends the run, before the closing lines."""
    mark = tmp_path / "started"
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        default:
          target: linux
        done:
          stage: s
          script: ["true"]
        long:
          stage: s
          needs: [done]
          script: ["touch {mark}; sleep 3102"]
        later:
          stage: s
          needs: [long]
          script: ["true"]
    """)
    run = run_in_pty(["run", "--local"], repo, type_when=(mark, b"\x03"))
    assert run.code == 130, run.raw.decode()
    screen = screen_of(run.raw)
    assert "loom run: SIGINT received; canceling (again to skip the 1s grace period)" in screen  # the ^C
    assert not any(COUNTS.search(line) for line in screen), screen
    table = summary_block(screen)
    assert normal(table[1:-1]) == [
        "job    stage  provider  status    duration  failure",
        "done   s      host      passed       N.NNs",
        "long   s      host      canceled     N.NNs  canceled",
        "later  s      host      canceled         -  canceled",
    ]
    assert table[-1].startswith("wall time ")
    assert screen[-3:] == ["loom run failed", screen[-2], "loom run: interrupted by SIGINT"]
    assert screen[-2].startswith("receipt: ")


RUN_ID = re.compile(r"loom-run-local-\d+")


def test_not_one_escape_byte_in_a_pipe_or_a_file_even_with_colour_allowed(tmp_path: Path) -> None:
    """Colour allowed (no NO_COLOR, TERM of a colour terminal), stderr a pipe, then a file: exactly
    the plain lines of a NO_COLOR run, byte for byte but for times and run ids, and no control
    character at all, though a step printed escapes, a tab and a carriage return."""
    repo = make_repo(tmp_path / "repo", FAILING)
    args = [*LOOM, "run", "--local", "-j", "1", "-v"]
    colour = {k: v for k, v in loom_env(TERM="xterm-256color").items() if k != "NO_COLOR"}
    piped = subprocess.run(args, cwd=repo, env=colour, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=90).stderr
    with open(tmp_path / "stderr.txt", "wb") as err:
        subprocess.run(args, cwd=repo, env=colour, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=err, timeout=90)
    filed = (tmp_path / "stderr.txt").read_bytes()
    reference = subprocess.run(args, cwd=repo, env=loom_env(), stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=90).stderr

    def plain(raw: bytes) -> list[str]:
        text = raw.decode()
        assert not [ch for ch in text if ch < " " and ch != "\n"], text  # not one ESC, CR, tab, ...
        return [RUN_ID.sub("RUN", line) for line in normal(text.splitlines())]

    assert b"\x1b" not in piped and b"\x1b" not in filed
    assert 'job "noisy" failed in N.NNs (exit code 3)' in plain(reference)
    assert plain(piped) == plain(reference)
    assert plain(filed) == plain(reference)


def test_ci_false_on_a_terminal_keeps_the_live_region(steps_repo: Path) -> None:
    """CI=false (as this repo's own workflow sets for its integration job) is not CI."""
    run = run_in_pty(["run", "--local", "-j", "2"], steps_repo, env={"CI": "false"})
    assert run.code == 0, run.raw.decode()
    assert COUNTS.search(run.raw.decode())


def test_a_jobs_warnings_go_above_the_live_region_whole(tmp_path: Path) -> None:
    """Spec §11 warnings (an artifacts path that matched nothing, everything a path matched
    excluded) from a worker while the region is on the screen: `waiter` runs until `after` (which
    needs `build`) has started, so the region is up when `build`'s warnings come. Each is printed
    whole in one write that first erases the region, and stays on the screen above the summary."""
    go = tmp_path / "go"
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        default:
          target: linux
        waiter:
          stage: s
          script: ["while [ ! -e {go} ]; do sleep 0.05; done"]
        build:
          stage: s
          artifacts:
            paths: [out, "missing/**", only-logs]
            exclude: ["**/*.log"]
          script: ["mkdir -p out only-logs && echo a > out/a.txt && echo l > only-logs/x.log"]
        after:
          stage: s
          needs: [build]
          script: ["touch {go}"]
    """)
    run = run_in_pty(["run", "--local", "-j", "2"], repo, color=True)
    assert run.code == 0, run.raw.decode()
    text = run.raw.decode()
    warned = ['warning: job "build": artifacts path "missing/**" matched nothing',
              'warning: job "build": artifacts path "only-logs": everything it matched is excluded']
    # the region was up: erased, then the warnings whole, one after the other (a redraw waits for
    # the next tenth of a second, so it cannot come between them)
    assert re.search(r"\r\x1b\[\d+A\x1b\[J" + "".join(re.escape(line) + "\r\n" for line in warned), text), text
    screen = screen_of(run.raw)
    assert not any(COUNTS.search(line) for line in screen), screen
    at = screen.index(warned[0])
    assert screen[at:at + 2] == warned
    assert normal(screen[at + 2:at + 3]) == ['job "build" passed in N.NNs']  # then its end line, whole too
    assert summary_block(screen)[-3:] == ["2 warnings:", *(f"  {line[len('warning: '):]}" for line in warned)]
