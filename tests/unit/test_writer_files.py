"""Documents are written at once and made durable in batches; a writer that takes over after a
crash turns the complete temp files of its predecessor into documents. Real files, no mocks."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import pytest

from loomrun.durable import encode_json, json_pieces
from loomrun.protocol import messages as m
from loomrun.writer.events import rfc3339
from loomrun.writer.files import Documents, Folders, LineFile, recover_temps, spread_children
from loomrun.writer.runlog import RunLog


def test_pending_documents_appear_only_when_flushed(tmp_path: Path) -> None:
    docs = Documents()
    assert docs.due_in() is None
    docs.write(tmp_path / "jobs" / "a" / "summary.json", {"status": "running"})
    assert 0.0 <= (docs.due_in() or 0.0) <= Documents.FLUSH_EVERY_S
    assert not (tmp_path / "jobs" / "a" / "summary.json").exists()  # a reader sees nothing half-made
    docs.flush()
    assert json.loads((tmp_path / "jobs" / "a" / "summary.json").read_text()) == {"status": "running"}
    assert docs.due_in() is None
    assert [p.name for p in (tmp_path / "jobs" / "a").iterdir()] == ["summary.json"]


def test_a_successor_recovers_complete_temps_newest_last_and_drops_torn_ones(tmp_path: Path) -> None:
    dead = Documents()  # the writer that will "die" without flushing
    target = tmp_path / "jobs" / "a" / "summary.json"
    dead.write(target, {"version": 1})
    dead.write(target, {"version": 2})
    dead.write(tmp_path / "jobs" / "a" / "manifest.json", {"steps": []})
    torn = tmp_path / "jobs" / "b" / ".summary.json.99.7.tmp"
    torn.parent.mkdir(parents=True)
    torn.write_text('{"status": "succ')  # killed mid-write
    (tmp_path / "notes.tmp").write_text("not ours")
    assert recover_temps(tmp_path) == 3
    assert json.loads(target.read_text()) == {"version": 2}
    assert json.loads((tmp_path / "jobs" / "a" / "manifest.json").read_text()) == {"steps": []}
    assert not torn.exists() and not (tmp_path / "jobs" / "b" / "summary.json").exists()
    assert (tmp_path / "notes.tmp").exists()
    assert sorted(p.name for p in (tmp_path / "jobs" / "a").iterdir()) == ["manifest.json", "summary.json"]


def test_folders_are_made_parents_first_and_remembered(tmp_path: Path) -> None:
    (tmp_path / "jobs" / "a").mkdir(parents=True)  # made by someone else: found, not an error
    folders = Folders(str(tmp_path))
    deep = f"{tmp_path}/jobs/a/user/script/01"
    events = LineFile(f"{deep}/events.jsonl", folders)
    events.write(b'{"seq":1}\n')
    events.close()
    assert (tmp_path / "jobs/a/user/script/01/events.jsonl").read_text() == '{"seq":1}\n'
    assert {f"{tmp_path}/jobs", f"{tmp_path}/jobs/a", deep} <= folders.made
    docs = Documents(folders)
    docs.write(f"{deep}/summary.json", {"index": 1})
    docs.write(f"{tmp_path}/jobs/b/system/provider/summary.json", {"section": "provider"})
    docs.flush()
    assert json.loads((tmp_path / "jobs/a/user/script/01/summary.json").read_text()) == {"index": 1}
    assert json.loads((tmp_path / "jobs/b/system/provider/summary.json").read_text()) == {"section": "provider"}


def _attributes(folder: Path) -> str | None:
    """`lsattr -d` flags, or None where the filesystem has none (tmpfs)."""
    probe = subprocess.run(["lsattr", "-d", str(folder)], capture_output=True, text=True, check=False)
    return probe.stdout.split()[0] if probe.returncode == 0 else None


def test_the_logs_folder_is_marked_as_the_top_of_unrelated_trees(tmp_path: Path) -> None:
    # chattr +T where the filesystem has it (this machine's ext4): each run's logs get a block group
    # of their own. Elsewhere a no-op that says so.
    start = m.RunStarted("loom-run-local-1", "loom-local-1", str(tmp_path), str(tmp_path / ".loom/workflow.yml"),
                         ("loom", "run", "--local"), 1)
    log = RunLog(start, [])
    logs = tmp_path / ".loom/.runtime/logs"
    assert log.logs_dir == logs / "loom-run-local-1" and log.logs_dir.is_dir()
    flags = _attributes(logs)
    if flags is None:
        assert spread_children(logs) is False
    else:
        assert "T" in flags, flags
        assert spread_children(logs) is True  # already marked: unchanged
        assert _attributes(logs) == flags
    assert spread_children(tmp_path / "missing") is False
    log.events.close()


def test_event_timestamps_match_a_fresh_formatting_across_seconds() -> None:
    """rfc3339 formats each whole second once; every call must still equal a fresh formatting, in
    order, backwards and across second, day and year boundaries."""

    def fresh(ns: int) -> str:
        secs, rem = divmod(ns, 1_000_000_000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{rem // 1_000_000:03d}Z"

    rng = random.Random(3)
    start = 1_798_761_599_000_000_000  # 2026-12-31T23:59:59Z
    stamps = [start + rng.randrange(0, 3_000_000_000) for _ in range(2_000)]
    for ns in [*sorted(stamps), *stamps, 0, start, start - 1]:
        assert rfc3339(ns) == fresh(ns)


def test_documents_spell_scalars_as_json_does() -> None:
    doc = {"none": None, "yes": True, "no": False, "int": -7, "big": 2**70, "float": 1.5, "text": 'a"é',
           "list": [1, None, True], "map": {"k": False}}
    text = encode_json(doc).decode()
    assert json.loads(text) == doc
    assert text.splitlines()[1:5] == ['  "none": null,', '  "yes": true,', '  "no": false,', '  "int": -7,']


@pytest.mark.parametrize("value", [
    {}, [], {"a": []}, {"a": {}}, {"a": {"b": [1, {"c": "é\u2028\"\\"}]}, "x": None, "t": True, "f": 1.5},
    {"ir": {"nodes": [{"id": "j", "needs": ["a", "b"]}, {"id": "k"}], "edges": []}, "roster": [["a", "b"]]},
    [[[[1]]]], "plain", 7,
])
@pytest.mark.parametrize("depth", [0, 1, 2, 3, 5])
def test_json_pieces_make_the_same_document_as_json_dumps(value: object, depth: int) -> None:
    assert json.loads("".join(json_pieces(value, depth))) == value


def test_json_pieces_give_json_text_as_it_is() -> None:
    ir = {"schema": "s", "nodes": [{"id": "é"}]}
    text = m.JSONText(json.dumps(ir))
    doc = {"pid": 1, "graph_ir": text, "roster": [["a", "s"]]}
    joined = "".join(json_pieces(doc, 2, m.JSONText))
    assert text in joined
    assert json.loads(joined) == {"pid": 1, "graph_ir": ir, "roster": [["a", "s"]]}
