"""Documents are written at once and made durable in batches; a writer that takes over after a
crash turns the complete temp files of its predecessor into documents. Real files, no mocks."""

from __future__ import annotations

import json
from pathlib import Path

from loomrun.writer.files import Documents, recover_temps


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
