"""quarantine.json: add, check, release, list; concurrent adders from real processes lose nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loomrun.cache.quarantine import Quarantine
from loomrun.errors import LoomError

DIFF = [{"path": "dist/app.js", "off": "sha256:aa", "on": "sha256:bb"}]


def test_add_is_quarantined_release(tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "cache")
    assert not q.is_quarantined("k") and q.list() == []
    record = q.add("k", "job diverged", "run-off", "run-on", DIFF)
    assert q.is_quarantined("k") and not q.is_quarantined("other")
    doc = json.loads((tmp_path / "cache" / "quarantine.json").read_text())
    assert doc["keys"]["k"] == record
    assert record["differences"] == DIFF and record["run_off"] == "run-off" and record["run_on"] == "run-on"
    assert q.release("k") is True
    assert q.release("k") is False
    assert not q.is_quarantined("k")


def test_release_without_a_file_is_false(tmp_path: Path) -> None:
    assert Quarantine(tmp_path).release("nothing") is False
    assert not (tmp_path / "quarantine.json").exists()


def test_quarantining_again_replaces_the_evidence(tmp_path: Path) -> None:
    q = Quarantine(tmp_path)
    q.add("k", "first", "a", "b", [])
    q.add("k", "second", "c", "d", DIFF)
    assert [r["reason"] for r in q.list()] == ["second"]


ADDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from loomrun.cache.quarantine import Quarantine
    q = Quarantine(Path(sys.argv[1]))
    sys.stdin.readline()
    for i in range(25):
        q.add(f"{sys.argv[2]}-{i}", "r", "off", "on", [])
""")


def test_two_processes_adding_at_once_lose_no_key(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", ADDER, str(tmp_path), name], stdin=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.close()
    assert [proc.wait(timeout=60) for proc in procs] == [0, 0]
    keys = {r["key"] for r in Quarantine(tmp_path).list()}
    assert keys == {f"{n}-{i}" for n in ("a", "b") for i in range(25)}


def test_a_corrupt_quarantine_file_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    (tmp_path / "quarantine.json").write_text("{not json")
    with pytest.raises(LoomError, match="not valid JSON"):
        Quarantine(tmp_path).is_quarantined("k")
