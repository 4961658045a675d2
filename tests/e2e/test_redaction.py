"""Redaction on bytes (spec §7.3, issue 12 leak 1): a secret value that holds newlines, ends with
one, is cut by the writer's reads or is not UTF-8 never reaches a file under `.loom/.runtime` or the
terminal. Real `loom run`s for step output, `--stream`, the command text and the receipt; a real
writer process fed the records a worker sends for section lines, messages and documents."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from pathlib import Path

from tests.process.runner import LOOM, Result, load, loom_env, make_repo

PEM = ("-----BEGIN TEST PRIVATE KEY-----\n"
       "MIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8AgEAAkEAq7BFUpkGp3+LQmlQ\n"
       "Yx2eqzDV+xNxVOd2N3jDxHNh9F6N3jD1uQIDAQABAkEAh+hbWUkq0S5D4TYH6Rz9\n"
       "-----END TEST PRIVATE KEY-----\n")
NEWLINE_END = "ends-with-a-newline-77\n"
SPLIT = "split-secret-value-123"
LITERAL = "literal-in-the-script-9"
BINARY = b"n\xffU8-\xfe-secret-bytes"

WORKFLOW = r"""
version: v1
stages: [s]
leaky:
  stage: s
  target: linux
  secrets:
    KEY: {ref: "env://T_PEM"}
    KEY_VAR: {ref: "env://T_PEM", file: false}
    NL: {ref: "env://T_NL", file: false}
    SPLIT: {ref: "env://T_SPLIT", file: false}
    LIT: {ref: "env://T_LIT", file: false}
    BIN: {ref: "env://T_BIN", file: false}
  script:
    - cat "$KEY"; printf '%s' "$KEY_VAR"; echo "$KEY_VAR" >&2
    - printf '%s' "$NL"; echo after; echo "$NL"
    - printf 'split-sec'; sleep 0.3; printf 'ret-value-123\n';
      printf 'split-secret-' >&2; sleep 0.3; printf 'value-123\n' >&2
    - head -c 1048570 /dev/zero | tr '\0' a; printf '%s\n' "$SPLIT"
    - echo literal-in-the-script-9
    - printf '%s\n' "$BIN"; printf '%s' "$BIN" | head -c 5; sleep 0.3; printf '%s\n' "$BIN" | tail -c +6
    - printf '%s\n' "$BIN" "$NL" "$KEY_VAR" "$SPLIT"; exit 4
"""


def secret_env() -> dict[str, str]:
    return loom_env(T_PEM=PEM, T_NL=NEWLINE_END, T_SPLIT=SPLIT, T_LIT=LITERAL,
                    T_BIN=os.fsdecode(BINARY))  # a str with surrogate escapes: the variable holds the bytes


def forbidden() -> list[bytes]:
    """The raw values, as JSON spells them, what a decoder would have made of the one that is not
    UTF-8, and the lines of the key (a line-by-line redaction would have let them through)."""
    texts = [PEM, PEM.rstrip("\n"), NEWLINE_END, SPLIT, LITERAL, BINARY.decode("utf-8", "replace"),
             *PEM.splitlines()[1:3]]
    found = [BINARY]
    for text in texts:
        found += [text.encode(), json.dumps(text, ensure_ascii=False)[1:-1].encode(), json.dumps(text)[1:-1].encode()]
    return list(dict.fromkeys(found))


def joined_lines(events_path: Path) -> dict[str, list[str]]:
    """stream -> its output lines, the pieces of a long line (`continued`) joined again."""
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    going: dict[str, str] = {}
    for raw in events_path.read_text().splitlines():
        ev = json.loads(raw)
        if ev["type"] != "output":
            continue
        lines = ev["lines"] if "lines" in ev else [ev["line"]]
        stream = ev["stream"]
        lines = [going.pop(stream, "") + lines[0], *lines[1:]]
        if ev.get("continued"):
            going[stream] = lines.pop()
        out[stream] += lines
    return out


def assert_nowhere(repo: Path, *streams: bytes) -> int:
    """No value in any byte under .loom/.runtime (the workspace snapshot, a copy of the user's own
    files, aside) nor in what reached the terminal. Returns how many files were read."""
    read = 0
    for path in (repo / ".loom" / ".runtime").rglob("*"):
        if path.is_file() and "workspaces" not in path.relative_to(repo).parts:
            data = path.read_bytes()
            read += 1
            for value in forbidden():
                assert value not in data, (path, value)
    for stream in streams:
        for value in forbidden():
            assert value not in stream, value
    return read


def test_values_with_newlines_split_reads_and_bytes_are_redacted_everywhere(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    proc = subprocess.run([*LOOM, "run", "--local", "--stream"], cwd=repo, env=secret_env(),
                          capture_output=True, timeout=120)
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    result = Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode("utf-8", "replace"), repo)
    assert result.code == 1, result.stderr
    assert result.job_summary("leaky")["exit_code"] == 4  # every step ran: the values did reach the job
    assert assert_nowhere(repo, proc.stdout, proc.stderr) > 10

    def lines(step: int) -> dict[str, list[str]]:
        return joined_lines(result.logs_dir / "jobs/leaky/user/script" / f"{step:02d}" / "events.jsonl")

    key, split = "[REDACTED:SECRET_KEY]", "[REDACTED:SECRET_SPLIT]"
    # the key from its file, then as a variable printed as is; echoed to stderr (one more newline)
    assert lines(1) == {"stdout": [key + key], "stderr": [key]}
    assert lines(2) == {"stdout": ["[REDACTED:SECRET_NL]after", "[REDACTED:SECRET_NL]"], "stderr": []}
    assert lines(3) == {"stdout": [split], "stderr": [split]}  # each cut by a slow second write
    assert lines(4) == {"stdout": ["a" * 1048570 + split], "stderr": []}  # across the 1 MiB read and piece
    assert lines(5) == {"stdout": ["[REDACTED:SECRET_LIT]"], "stderr": []}
    assert lines(6) == {"stdout": ["[REDACTED:SECRET_BIN]"] * 2, "stderr": []}
    assert lines(7)["stdout"] == ["[REDACTED:SECRET_BIN]", "[REDACTED:SECRET_NL]", key, split]
    literal = load(result.logs_dir / "jobs/leaky/user/script/05/summary.json")
    assert literal["command"] == "echo [REDACTED:SECRET_LIT]"
    # --stream and the failed job's last lines show the markers
    assert b"[leaky] [REDACTED:SECRET_SPLIT]" in proc.stderr
    tail = proc.stderr.split(b'job "leaky" failed', 1)[1]
    assert b"    [REDACTED:SECRET_BIN]\n    [REDACTED:SECRET_NL]\n" in tail
    assert b"[REDACTED:SECRET_LIT]" in Path(result.receipt_path).read_bytes()  # the graph's commands


def _recv(conn: Connection, kind: type, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wait([conn], timeout=deadline - time.monotonic()):
            msg = conn.recv()
            if isinstance(msg, kind):
                return msg
    raise AssertionError(f"no {kind.__name__} from the writer")


def test_the_writer_redacts_sections_messages_documents_and_its_answers(tmp_path: Path) -> None:
    """A real writer process, given what a worker and the supervisor send: the multi-line value in
    section lines (one line per record, as workers send them), in a section's error, a step's
    command and output, the job's message and the run's error; none of it is written or answered."""
    from loomrun.protocol import messages as m
    from loomrun.writer import spawn as writer_process

    repo = tmp_path / "repo"
    (repo / ".loom").mkdir(parents=True)
    writer = writer_process.spawn()
    mine, theirs = socket.socketpair()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        now = time.time_ns()
        writer.conn.send(m.RunStarted("loom-run-local-1", "p-1", str(repo), str(repo / ".loom/workflow.yml"),
                                      ("loom", "run", "--local"), now))
        assert isinstance(_recv(writer.conn, m.WriterReady), m.WriterReady)
        writer.conn.send(m.JobRoster((("j", "s"),)))
        writer.conn.send(m.AttachWorker("j"))
        with socket.fromfd(writer.conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
            reduction.sendfds(s, [theirs.fileno()])
        theirs.close()
        worker = Connection(mine.detach())
        worker.send(m.Redact((("KEY", PEM), ("BIN", os.fsdecode(BINARY)))))
        worker.send(m.SectionBegan("j", "provider", now))
        for line in ["pulling", *PEM.splitlines(), f"bytes {os.fsdecode(BINARY)}"]:
            worker.send(m.SectionLines("j", "provider", (line,), "stdout", now))
        worker.send(m.SectionEnded("j", "provider", "failed", now, "LOOM_PROVIDER_ERROR", f"bad key {PEM}",
                                   {"image": f"img:{os.fsdecode(BINARY)}"}))
        worker.send(m.StepStarted("j", 1, f"printf '{PEM}'", now))
        with socket.fromfd(worker.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
            reduction.sendfds(s, [out_r, err_r])
        os.close(out_r)
        os.close(err_r)
        os.write(out_w, PEM.encode()[:40])
        time.sleep(0.2)  # the writer reads the first part alone
        os.write(out_w, PEM.encode()[40:] + BINARY + b"\n")
        os.close(out_w)
        os.close(err_w)
        out_w = err_w = -1
        worker.send(m.StepFinished("j", 1, 1, 5, time.time_ns()))
        worker.close()
        writer.conn.send(m.JobEnded("j", "s", "failed", 1, m.PROVIDER_ERROR, f"provider: {PEM}", "host", None,
                                    now, time.time_ns(), answer=True))
        written = _recv(writer.conn, m.JobWritten)
        assert isinstance(written, m.JobWritten)
        assert written.message == "provider: [REDACTED:SECRET_KEY]"
        assert written.tail == ("[REDACTED:SECRET_KEY][REDACTED:SECRET_BIN]",)  # the failing step's line
        writer.conn.send(m.RunEnded("failure", 1, time.time_ns(), f"job failed: {PEM}", {"note": PEM}))
        assert isinstance(_recv(writer.conn, m.RunWritten), m.RunWritten)
    finally:
        for fd in (out_w, err_w):
            if fd >= 0:
                os.close(fd)
        writer.conn.close()
        wait([writer.sentinel], timeout=30)
        os.waitpid(writer.pid, 0)
        os.close(writer.sentinel)
    logs = repo / ".loom/.runtime/logs/loom-run-local-1"
    section = [load_line(raw) for raw in (logs / "jobs/j/system/provider/events.jsonl").read_text().splitlines()]
    shown = [e["line"] for e in section if e["type"] == "output"]
    assert shown == ["pulling", *["[REDACTED:SECRET_KEY]"] * 4, "bytes [REDACTED:SECRET_BIN]"]  # line by line
    assert PEM.splitlines()[1] not in (logs / "jobs/j/system/provider/events.jsonl").read_text()
    summary = load(logs / "jobs/j/system/provider/summary.json")
    assert (summary["message"], summary["image"]) == ("bad key [REDACTED:SECRET_KEY]", "img:[REDACTED:SECRET_BIN]")
    assert load(logs / "jobs/j/user/script/01/summary.json")["command"] == "printf '[REDACTED:SECRET_KEY]'"
    receipt = load(repo / ".loom/.runtime/receipts/loom-run-local-1.json")
    assert (receipt["error"], receipt["note"]) == ("job failed: [REDACTED:SECRET_KEY]", "[REDACTED:SECRET_KEY]")
    assert_nowhere(repo)
    for path in logs.rglob("*"):
        if path.is_file():
            for line in PEM.splitlines()[1:3]:
                assert line.encode() not in path.read_bytes(), path


def load_line(raw: str) -> dict[str, object]:
    return dict(json.loads(raw))
