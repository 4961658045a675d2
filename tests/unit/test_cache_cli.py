"""`loom cache list | clear | quarantine | release` through `python -m loomrun` in a throwaway repo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loomrun.cache import CacheStore, cache_root


def _loom(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loomrun", "cache", *args], cwd=repo,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / ".loom").mkdir()
    (tmp_path / ".loom" / "workflow.yml").write_text("stages: [ci]\n")
    (tmp_path / "deps").mkdir()
    (tmp_path / "deps" / "a.txt").write_text("a\n")
    return tmp_path


def test_list_shows_entries_on_stdout_and_nothing_when_empty(repo: Path) -> None:
    empty = _loom(repo, "list")
    assert (empty.returncode, empty.stdout) == (0, "")
    assert "no cache entries" in empty.stderr
    store = CacheStore(cache_root(repo))
    store.save("deps-v1", repo, ["deps"], source_run="loom-run-local-1")
    store.quarantine.add("deps-v1", "diverged", "r1", "r2", [])
    out = _loom(repo, "list")
    assert out.returncode == 0
    header, row = out.stdout.splitlines()
    assert header.split()[0] == "KEY"
    assert row.startswith("deps-v1") and "loom-run-local-1" in row and "quarantined" in row


def test_clear_one_unknown_and_all(repo: Path) -> None:
    store = CacheStore(cache_root(repo))
    for key in ("a", "b"):
        store.save(key, repo, ["deps"], source_run="r")
    unknown = _loom(repo, "clear", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == 'loom cache clear: no cache entry with key "nope"'
    one = _loom(repo, "clear", "a")
    assert one.returncode == 0 and "removed 1 cache entry" in one.stderr
    assert [e["key"] for e in store.list()] == ["b"]
    everything = _loom(repo, "clear")
    assert everything.returncode == 0 and store.list() == []


def test_clear_removes_symlinked_entries_without_following_them(
    repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A link among the entries (put there by hand, or by a tool) used to stop `clear` at the first
    one. Everything is removed now, and nothing the links point at."""
    store = CacheStore(cache_root(repo))
    for key in ("a", "b", "c"):
        store.save(key, repo, ["deps"], source_run="r")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(store.root / "entries" / "b", outside / "copy-of-b")
    entries = store.root / "entries"
    (entries / "a-link").symlink_to(outside / "copy-of-b")
    (entries / "b").rename(outside / "moved-b")
    (entries / "b").symlink_to(outside / "moved-b")
    (entries / "dangling").symlink_to(outside / "nothing")
    assert [e["key"] for e in store.list()] == ["a", "c"]  # links are not followed out of the store
    one = _loom(repo, "clear", "b")
    assert one.returncode == 0 and "removed 1 cache entry" in one.stderr, one.stderr
    everything = _loom(repo, "clear")
    assert everything.returncode == 0, everything.stderr
    assert list(entries.iterdir()) == []
    assert sorted(p.name for p in outside.iterdir()) == ["copy-of-b", "moved-b"]
    assert (outside / "moved-b" / "meta.json").is_file() and (outside / "copy-of-b" / "meta.json").is_file()


def test_quarantine_listing_and_release(repo: Path) -> None:
    store = CacheStore(cache_root(repo))
    none = _loom(repo, "quarantine")
    assert (none.returncode, none.stdout) == (0, "")
    store.quarantine.add("poisoned", 'job "build" diverged', "run-off", "run-on",
                         [{"path": "dist/app", "off": "sha256:aa", "on": "sha256:bb"}])
    listed = _loom(repo, "quarantine")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[0] == "poisoned"
    assert "dist/app: off sha256:aa / on sha256:bb" in listed.stdout and "run-off" in listed.stdout
    released = _loom(repo, "release", "poisoned")
    assert released.returncode == 0 and not store.quarantine.is_quarantined("poisoned")
    again = _loom(repo, "release", "poisoned")
    assert again.returncode == 1
    assert again.stderr.strip() == 'loom cache release: key "poisoned" is not quarantined'
    assert "Traceback" not in again.stderr
