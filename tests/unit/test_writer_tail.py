"""`loomrun.writer.tail`: a failed job's last lines read back from the end of an events file the
writer's own functions wrote (batches, single lines, pieces of a long line, both streams)."""

from __future__ import annotations

import json
from pathlib import Path

from loomrun.writer.events import emit, emit_output
from loomrun.writer.files import Folders, LineFile, dumps
from loomrun.writer.tail import TAIL_WIDTH, last_lines, terminal_safe


def events_file(tmp_path: Path) -> LineFile:
    return LineFile(str(tmp_path / "events.jsonl"), Folders(str(tmp_path)))


def test_the_last_lines_across_blocks_batches_and_streams(tmp_path: Path) -> None:
    f = events_file(tmp_path)
    emit(f, 1, "phase_started", "step", "job.execution", job_id="j", step=1, command="x")
    emit_output(f, 2, "j", 1, "stdout", "\n".join(f"line {i} " + "x" * 300 for i in range(1000)))  # > 64 KiB
    emit_output(f, 3, "j", 1, "stderr", "oops")
    emit_output(f, 4, "j", 1, "stdout", "a\nb")
    emit(f, 5, "step_finished", "step", "job.execution", job_id="j", step=1, exit_code=1)
    got = last_lines(f.path)
    assert got[-3:] == ["oops", "a", "b"]
    assert got[:-3] == [f"line {i} " + "x" * 300 for i in range(983, 1000)]
    assert last_lines(f.path, 2) == ["a", "b"]
    assert last_lines(str(tmp_path / "missing.jsonl")) == []


def test_a_long_line_in_pieces_is_one_line_shown_from_its_start(tmp_path: Path) -> None:
    f = events_file(tmp_path)
    emit_output(f, 1, "j", 1, "stdout", "before")
    emit_output(f, 2, "j", 1, "stdout", "start" + "y" * 70_000, continued=True)
    emit_output(f, 3, "j", 1, "stderr", "between")
    emit_output(f, 4, "j", 1, "stdout", "z" * 70_000, continued=True)
    emit_output(f, 5, "j", 1, "stdout", "end of the long line\nafter")
    emit_output(f, 6, "j", 1, "stderr", "cut short", continued=True)  # a step killed in the middle of a line
    got = last_lines(f.path)
    assert got == ["before", "between", "start" + "y" * (TAIL_WIDTH - 6) + "…", "after", "cut short"]


def test_terminal_safe() -> None:
    assert terminal_safe("\x1b[31mred\x1b[0m\tx\r") == "red     x"
    assert terminal_safe("\x1b]0;title\x07text\x9b\x00") == "text"
    assert terminal_safe("é" * TAIL_WIDTH) == "é" * TAIL_WIDTH
    assert terminal_safe("é" * (TAIL_WIDTH + 1)) == "é" * (TAIL_WIDTH - 1) + "…"


def test_a_batch_of_lines_is_the_json_array_of_its_lines(tmp_path: Path) -> None:
    """emit_output encodes a batch as one string (its newlines stand in for the array's separators):
    the event must hold exactly the lines, whatever they contain."""
    texts = [
        "a\nb", "\n", "\n\n", "tail\n\nx", 'say "hi"\nC:\\new\\n\\\nend\\', "tab\there\x00nul\x1besc\r\nnext",
        "é ü ß\n漢字\n\U0001F600 emoji\n\u2028sep\u2029", "\ufffd\ufffd\nreplaced",
    ]
    f = events_file(tmp_path)
    for i, text in enumerate(texts):
        emit_output(f, i, "j", 1, "stdout", text)
    raw = Path(f.path).read_text(encoding="utf-8").split("\n")[:-1]  # (splitlines would cut at U+2028)
    assert [json.loads(line)["lines"] for line in raw] == [t.split("\n") for t in texts]
    # byte for byte what encoding the list of lines gives
    assert [line[line.index('"lines":'):] for line in raw] == ['"lines":' + dumps(t.split("\n")) + "}" for t in texts]
    assert [json.loads(line)["seq"] for line in raw] == list(range(1, len(texts) + 1))
