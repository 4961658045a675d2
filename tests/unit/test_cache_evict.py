"""The cache store's size bound (spec §13): least recently restored first, quarantined entries kept
and counted, an entry in use never evicted, and real processes restoring while others save and
evict (no restore ever sees half an entry). Real archives on disk; `loom cache list` and `loom gc`
through `python -m loomrun`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from loomrun.cache import evict
from loomrun.cache.store import CacheStore, key_dirname


def _workspace(root: Path, name: str, size: int = 200_000) -> Path:
    ws = root / f"ws-{name}"
    (ws / "deps").mkdir(parents=True, exist_ok=True)
    (ws / "deps" / "blob.bin").write_bytes(os.urandom(size))  # random: zstd cannot shrink it
    return ws


def _save(store: CacheStore, tmp: Path, key: str, used_at: float | None = None, saved_at: float = 1_000.0) -> None:
    store.save(key, _workspace(tmp, key), ["deps"], source_run="r")
    entry = store.root / "entries" / key_dirname(key)
    os.utime(entry / "meta.json", (saved_at, saved_at))
    if used_at is not None:
        (entry / "used").touch()
        os.utime(entry / "used", (used_at, used_at))


def _keys(store: CacheStore) -> set[str]:
    return {str(m["key"]) for m in store.list()}


@pytest.fixture
def store(tmp_path: Path) -> CacheStore:
    return CacheStore(tmp_path / "cache")


def test_the_least_recently_restored_go_first_until_the_store_fits(tmp_path: Path, store: CacheStore) -> None:
    _save(store, tmp_path, "old-restored-recently", used_at=5_000.0, saved_at=1_000.0)
    _save(store, tmp_path, "never-restored", saved_at=2_000.0)
    _save(store, tmp_path, "restored-long-ago", used_at=1_500.0, saved_at=1_100.0)
    _save(store, tmp_path, "fresh-save", saved_at=4_000.0)
    one = max(e.size for e in evict.entries(store.root))
    assert evict.store_size(store.root) > 3 * one
    gone, size = store.bound(2 * one + one // 2)  # room for two
    assert [e.key for e in gone] == ["restored-long-ago", "never-restored"]
    assert _keys(store) == {"old-restored-recently", "fresh-save"}
    assert size == evict.store_size(store.root) <= 2 * one + one // 2
    assert store.bound(10 * one) == ([], size)  # within bounds: nothing goes


def test_quarantined_entries_are_kept_and_count(tmp_path: Path, store: CacheStore) -> None:
    _save(store, tmp_path, "poisoned", saved_at=1_000.0)
    _save(store, tmp_path, "a", saved_at=2_000.0)
    _save(store, tmp_path, "b", saved_at=3_000.0)
    store.quarantine.add("poisoned", "diverged", "r1", "r2", [])
    one = max(e.size for e in evict.entries(store.root))
    gone, size = store.bound(2 * one + one // 2)
    assert [e.key for e in gone] == ["a"]  # the oldest that is not evidence
    assert _keys(store) == {"poisoned", "b"}
    gone, size = store.bound(one // 2)  # cannot fit: the evidence stays, the rest goes
    assert [e.key for e in gone] == ["b"] and _keys(store) == {"poisoned"} and size > one // 2


def test_an_entry_being_restored_or_saved_is_never_evicted(tmp_path: Path, store: CacheStore) -> None:
    _save(store, tmp_path, "busy", saved_at=1_000.0)
    _save(store, tmp_path, "idle", saved_at=2_000.0)
    one = max(e.size for e in evict.entries(store.root))
    with evict.reading(store.root, key_dirname("busy")):  # a restore holds its key's lock shared
        gone, _ = store.bound(one + one // 2)
    assert [e.key for e in gone] == ["idle"] and _keys(store) == {"busy"}
    _save(store, tmp_path, "idle", saved_at=2_000.0)
    with store._lock("busy"):  # a save's commit, or `loom cache clear`, holds it exclusive
        gone, _ = store.bound(one + one // 2)
    assert [e.key for e in gone] == ["idle"] and _keys(store) == {"busy"}


def test_a_restore_marks_the_entry_used(tmp_path: Path, store: CacheStore) -> None:
    _save(store, tmp_path, "k", saved_at=1_000.0)
    [before] = evict.entries(store.root)
    assert before.last_restore is None and before.last_use == 1_000.0
    dst = tmp_path / "dst"
    dst.mkdir()
    assert store.restore(["k"], dst).hit
    [after] = evict.entries(store.root)
    assert after.last_restore is not None and after.last_use == after.last_restore >= time.time() - 60
    assert store.restore(["missing"], dst).status == "miss"
    assert sorted(p.name for p in (store.root / "locks").iterdir()) == ["k.lock"]  # a miss leaves no lock file


# ---- real processes: restores racing saves and evictions -------------------------------------------

WORKER = textwrap.dedent("""
    import hashlib, os, shutil, sys
    from pathlib import Path
    from loomrun.cache.store import CacheStore
    store, base, role, rounds = CacheStore(Path(sys.argv[1])), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    keys = [f"k{i}" for i in range(6)]
    sys.stdin.readline()  # start together
    hits = 0
    for n in range(rounds):
        key = keys[(n * 7 + len(role)) % len(keys)]
        if role.startswith("saver"):
            ws = base / f"{role}-{n}"
            (ws / "deps").mkdir(parents=True)
            data = os.urandom(60_000 + n * 997)
            (ws / "deps" / "blob.bin").write_bytes(data)
            (ws / "deps" / "blob.sha256").write_text(hashlib.sha256(data).hexdigest())
            store.save(key, ws, ["deps"], source_run=role)
            store.bound(200_000)
            shutil.rmtree(ws)
        else:
            dst = base / f"{role}-{n}"
            dst.mkdir()
            res = store.restore([key], dst)
            if res.refused:
                sys.exit(f"refused: {res.refused}")
            if res.hit:
                hits += 1
                data = (dst / "deps" / "blob.bin").read_bytes()  # whole, or the restore failed
                if hashlib.sha256(data).hexdigest() != (dst / "deps" / "blob.sha256").read_text():
                    sys.exit(f"half an entry restored from {key}")
            elif (dst / "deps").exists():
                sys.exit(f"a miss left files: {list((dst / 'deps').iterdir())}")
            shutil.rmtree(dst)
    print(hits)
""")


def test_restores_racing_saves_and_evictions_see_whole_entries_or_none(tmp_path: Path, store: CacheStore) -> None:
    roles = ["saver-a", "saver-bb", "reader-a", "reader-bb", "reader-ccc"]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(store.root), str(tmp_path), role, "40"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for role in roles]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), results
    assert sum(int(out) for out, _ in results[2:]) > 0  # the readers did restore entries
    assert evict.store_size(store.root) <= 200_000
    for entry in store.list():  # every entry left is whole
        dst = tmp_path / f"check-{entry['key']}"
        dst.mkdir()
        assert store.restore([str(entry["key"])], dst).hit
        data = (dst / "deps" / "blob.bin").read_bytes()
        assert hashlib.sha256(data).hexdigest() == (dst / "deps" / "blob.sha256").read_text()


# ---- through the CLI -------------------------------------------------------------------------------

def _loom(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loomrun", *args], cwd=repo, capture_output=True, text=True,
                          timeout=120, check=False)


def test_cache_list_shows_size_and_last_use_and_gc_evicts_what_its_dry_run_lists(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".loom").mkdir(parents=True)
    (repo / ".loom" / "workflow.yml").write_text("stages: [ci]\n")
    store = CacheStore(repo / ".loom" / ".runtime" / "cache")
    for i, key in enumerate(["a", "b", "c"]):
        _save(store, tmp_path, key, saved_at=1_000.0 + i)
    dst = tmp_path / "dst"
    dst.mkdir()
    assert store.restore(["a"], dst).hit
    listed = _loom(repo, "cache", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["KEY", "SIZE", "CONTENT"] and "LAST USED" in header
    row = {r.split()[0]: r for r in rows}
    assert "KiB" in row["a"].split()[2] and "never" not in row["a"] and "never" in row["b"]
    one = max(e.size for e in evict.entries(store.root))
    (repo / ".loom" / "config.yml").write_text(f"runtime:\n  cache: {{maxSize: {one + one // 2}}}\n")
    dry = _loom(repo, "gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [line.split(":")[0] for line in dry.stdout.splitlines()] == ["would evict cache entry b",
                                                                     "would evict cache entry c"]
    assert _keys(store) == {"a", "b", "c"}
    real = _loom(repo, "gc")
    assert real.returncode == 0, real.stderr
    assert [line.replace("would evict", "evicted") for line in dry.stdout.splitlines()] == real.stdout.splitlines()
    assert _keys(store) == {"a"} and "2 cache entries" in real.stderr
