"""The cache inside real runs, and --cache-diff with quarantine (spec §6), through the `loom` command."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import zstandard

from loomrun.cache.quarantine import Quarantine
from tests.process.runner import assert_logs_valid, load, make_repo, run_loom

POISONABLE = """
version: v1
stages: [s]
build:
  stage: s
  target: linux
  cache:
    key: deps-$DEPS_VERSION
    paths: [deps]
  variables:
    DEPS_VERSION: v1
  artifacts:
    paths: [out]
  script:
    - if [ ! -f deps/lib.txt ]; then mkdir -p deps && echo real > deps/lib.txt; fi
    - mkdir -p out && cp deps/lib.txt out/lib.txt
"""


def _poison(repo: Path, key_dir_glob: str = "*") -> None:
    """Replace the stored archive's deps/lib.txt with other bytes (a poisoned cache entry)."""
    entry = next((repo / ".loom/.runtime/cache/entries").glob(key_dir_glob))
    archive = next(entry.glob("*.tar.zst"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"poisoned\n"
        folder = tarfile.TarInfo("deps")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        info = tarfile.TarInfo("deps/lib.txt")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    archive.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))


def test_cache_round_trip_in_runs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", POISONABLE)
    first = run_loom(repo, "run", "--local", "-v")
    assert first.code == 0, first.stderr
    assert 'job "build": cache deps-v1: miss' in first.stderr
    save = load(first.logs_dir / "jobs/build/system/cache_save/summary.json")
    assert save["status"] == "success" and save["caches"][0]["key"] == "deps-v1"
    second = run_loom(repo, "run", "--local", "-v")
    assert 'job "build": cache deps-v1: hit' in second.stderr
    restore = load(second.logs_dir / "jobs/build/system/cache_restore/summary.json")
    assert restore["caches"][0]["status"] == "hit"
    sections = [s["name"] for s in second.job_manifest("build")["system_sections"]]
    assert sections == ["provider", "cache_restore", "cache_save", "artifact_extract", "cleanup"]
    assert_logs_valid(second)


def test_poisoned_cache_is_caught_and_quarantined(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", POISONABLE)
    assert run_loom(repo, "run", "--local").code == 0  # fills the cache
    _poison(repo)
    diff = run_loom(repo, "run", "--local", "--cache-diff")
    assert diff.code == 1, diff.stderr
    assert 'cache-diff: job "build" diverged with the cache on; quarantined deps-v1' in diff.stderr
    block = diff.receipt["cache_diff"]
    assert block["quarantined"] == ["deps-v1"]
    [job] = block["jobs"]
    assert job["id"] == "build" and job["diverged"] and job["cache_hits"] == ["deps-v1"]
    paths = {d["path"]: d for d in job["differences"]}
    assert set(paths) == {"deps/lib.txt", "out/lib.txt"}
    assert paths["out/lib.txt"]["off"] != paths["out/lib.txt"]["on"]
    assert [p["cache"] for p in block["passes"]] == ["off", "on"]
    assert block["passes"][0]["run_id"] != block["passes"][1]["run_id"]
    quarantine = load(repo / ".loom/.runtime/cache/quarantine.json")
    text = json.dumps(quarantine)
    assert "deps-v1" in text and block["passes"][0]["run_id"] in text and paths["out/lib.txt"]["on"] in text
    # The next plain run treats the key as a miss and says why.
    plain = run_loom(repo, "run", "--local", "-v")
    assert plain.code == 0
    assert 'job "build": cache deps-v1: quarantined' in plain.stderr
    assert (plain.logs_dir / "jobs/build/artifacts/out/lib.txt").read_text() == "real\n"
    # Released, it is restored again (poisoned content and all: releasing is the user's call).
    released = run_loom(repo, "cache", "release", "deps-v1")
    assert released.code == 0, released.stderr
    again = run_loom(repo, "run", "--local", "-v")
    assert 'job "build": cache deps-v1: hit' in again.stderr


def test_deterministic_workflow_passes_cache_diff(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", POISONABLE)
    assert run_loom(repo, "run", "--local").code == 0
    diff = run_loom(repo, "run", "--local", "--cache-diff")
    assert diff.code == 0, diff.stderr
    block = diff.receipt["cache_diff"]
    assert block["quarantined"] == [] and block["jobs"][0]["cache_hits"] == ["deps-v1"]
    assert not block["jobs"][0]["diverged"]
    assert Quarantine(repo / ".loom/.runtime/cache").list() == []


def test_timestamp_without_cache_hit_is_nondeterministic_not_quarantined(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    stamp:
      stage: s
      target: linux
      artifacts:
        paths: [stamp.txt]
      script:
        - date +%s%N > stamp.txt
    """)
    diff = run_loom(repo, "run", "--local", "--cache-diff")
    assert diff.code == 0, diff.stderr
    block = diff.receipt["cache_diff"]
    assert block["quarantined"] == [] and block["nondeterministic"] == ["stamp"]
    assert 'cache-diff: job "stamp" is nondeterministic (differs without a cache hit)' in diff.stderr
