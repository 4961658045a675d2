"""Artifacts, globs and cache entries on hostile or real-world trees (issue 11, items 1, 2, 8, 13, 17),
through the real `loom` command on host jobs.

Host jobs share the run's snapshot, so a middle job can leave the workspace in any state before a
dependent restores the artifacts over it.
"""

from __future__ import annotations

import io
import os
import tarfile
import textwrap
from pathlib import Path

import pytest
import zstandard

from loomrun.cache.quarantine import Quarantine
from tests.process.runner import Result, assert_logs_valid, load, make_repo, output_lines, run_loom


def _warnings(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


def _section_lines(result: Result, job: str, section: str) -> list[str]:
    return output_lines(result.logs_dir / "jobs" / job / "system" / section / "events.jsonl")


# -- items 1 and 2: links and empty folders in artifacts, restored over anything ---------------------
OVERWRITE = """
version: v1
stages: [build, mess, check]
default:
  target: linux
build:
  stage: build
  script:
    - mkdir -p out/sub out/empty/deeper out/becomes_file out/node_modules/.bin out/node_modules/tool
    - echo v1 > out/lib.so.1 && ln -s lib.so.1 out/lib.so && ln -s /etc/hostname out/abs
    - echo tool > out/node_modules/tool/cli.js && ln -s ../tool/cli.js out/node_modules/.bin/tool
    - echo inside > out/becomes_file/x && echo plain > out/becomes_dir
    - echo sub > out/sub/s.txt && ln -s sub out/linkdir
  artifacts:
    paths: [out]
mess:
  stage: mess
  variables:
    OUTSIDE: "{outside}"
  script:
    - rm out/lib.so && echo wrong > out/lib.so
    - rm out/abs && ln -s elsewhere out/abs
    - rm out/node_modules/.bin/tool && ln -s ../../lib.so.1 out/node_modules/.bin/tool
    - rm -r out/becomes_file && echo file > out/becomes_file
    - rm out/becomes_dir && mkdir -p out/becomes_dir/d && echo x > out/becomes_dir/d/y
    - rm -r out/empty && echo changed > out/lib.so.1
    - rm -r out/sub && ln -s "$OUTSIDE" out/sub
    - rm out/linkdir && mkdir out/linkdir && echo z > out/linkdir/z
check:
  stage: check
  script:
    - test "$(readlink out/lib.so)" = lib.so.1 && test "$(cat out/lib.so)" = v1
    - test "$(readlink out/abs)" = /etc/hostname
    - test "$(readlink out/node_modules/.bin/tool)" = ../tool/cli.js
    - test -d out/becomes_file && test "$(cat out/becomes_file/x)" = inside
    - test -f out/becomes_dir && test "$(cat out/becomes_dir)" = plain
    - test -d out/empty/deeper
    - test -d out/sub && ! test -L out/sub && test "$(cat out/sub/s.txt)" = sub
    - test -L out/linkdir && test "$(readlink out/linkdir)" = sub
"""


def test_artifact_links_and_empty_folders_win_over_whatever_the_workspace_holds(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = make_repo(tmp_path / "repo", OVERWRITE.replace("{outside}", str(outside)))
    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    assert list(outside.iterdir()) == []  # the link standing where a folder goes was replaced, not written through
    entries = {a["path"]: a for a in result.job_manifest("build")["artifacts"]}
    assert entries["out/empty/deeper"] == {"path": "out/empty/deeper", "size": 0, "sha256": None, "dir": True}
    assert entries["out/lib.so"]["symlink"] == "lib.so.1"
    assert entries["out/abs"]["symlink"] == "/etc/hostname"
    assert entries["out/node_modules/.bin/tool"]["symlink"] == "../tool/cli.js"
    assert "out/sub/s.txt" in entries and "out/linkdir" in entries
    kept = result.logs_dir / "jobs" / "build" / "artifacts" / "out"
    assert os.readlink(kept / "lib.so") == "lib.so.1" and (kept / "empty" / "deeper").is_dir()
    assert "out/empty/deeper/" in _section_lines(result, "build", "artifact_extract")
    assert _warnings(result) == []
    assert_logs_valid(result)


def test_a_restore_that_really_fails_is_a_provider_error_in_one_line(tmp_path: Path) -> None:
    """The staged artifacts of `build` get a FIFO (a copy refuses it even as root)."""
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [build, mess, check]
    default:
      target: linux
    build:
      stage: build
      script: ["mkdir -p out && echo a > out/a.txt"]
      artifacts:
        paths: [out]
    mess:
      stage: mess
      script: ['mkfifo "../../tmp/$LOOM_RUN_ID/artifacts/build/out/pipe"']
    check:
      stage: check
      script: ["true"]
    """)
    result = run_loom(repo, "run", "--local")
    assert result.code == 1, result.stderr
    summary = result.job_summary("check")
    assert summary["failure_kind"] == "provider_error"
    message = summary["message"]
    assert message.startswith("cannot restore the artifacts of build: ") and "out/pipe" in message
    assert "\n" not in message and len(message) < 300 and "/.loom/.runtime/" not in message
    assert result.job_manifest("check")["failing_section"] == "artifact_restore"
    assert 'job "check" failed' in result.stderr and "(provider_error: cannot restore" in result.stderr


# -- item 8: globs over symlink loops -----------------------------------------------------------------
LOOPS = """
version: v1
stages: [build, use]
default:
  target: linux
build:
  stage: build
  cache:
    key:
      prefix: nm
      files: ["**/*.txt"]
    paths: [node_modules]
  artifacts:
    paths: ["**/*.txt"]
  script: ["cat node_modules/a/b/f.txt node_modules/self/node_modules/c/g.txt"]
use:
  stage: use
  script: ["cat node_modules/a/b/f.txt"]
"""


@pytest.mark.timeout(150)
def test_globs_through_symlink_loops_finish(tmp_path: Path) -> None:
    """A committed node_modules with links back up (git keeps them; so does the snapshot). With
    glob.glob(recursive=True) the key, artifact, save and fingerprint walks ran until the timeout."""
    nm = tmp_path / "repo" / "node_modules"
    (nm / "a" / "b").mkdir(parents=True)
    (nm / "c").mkdir()
    (nm / "a" / "b" / "f.txt").write_text("x\n")
    (nm / "c" / "g.txt").write_text("y\n")
    for link, target in {"self": "..", "a/up": "../..", "c/here": ".", "c/peer": "../a"}.items():
        (nm / link).symlink_to(target)
    repo = make_repo(tmp_path / "repo", LOOPS)
    first = run_loom(repo, "run", "--local", timeout=60)
    assert first.code == 0, first.stderr
    artifacts = sorted(a["path"] for a in first.job_manifest("build")["artifacts"])
    assert artifacts == ["node_modules/a/b/f.txt", "node_modules/c/g.txt"]
    diff = run_loom(repo, "run", "--local", "--cache-diff", timeout=60)  # restore, save and fingerprint
    assert diff.code == 0, diff.stderr
    [job] = [j for j in diff.receipt["cache_diff"]["jobs"] if j["id"] == "build"]
    assert job["cache_hits"] and not job["diverged"]


# -- item 17: what matched nothing, and a quarantined key, warn on the terminal --------------------------
UNMATCHED = """
version: v1
stages: [s]
build:
  stage: s
  target: linux
  cache:
    key:
      prefix: deps
      files: [lock.txt, "nothing/*.lock"]
    paths: [deps, absent]
  artifacts:
    paths: [out, "missing/**", only-logs]
    exclude: ["**/*.log"]
  script:
    - mkdir -p out deps only-logs && echo a > out/a.txt && echo l > only-logs/x.log && echo d > deps/d
"""


def test_paths_that_match_nothing_warn_on_the_terminal_and_in_the_sections(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "lock.txt").write_text("v1\n")
    repo = make_repo(tmp_path / "repo", UNMATCHED)
    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    assert _warnings(result) == [
        'warning: job "build": cache key files: "nothing/*.lock" matched nothing',
        'warning: job "build": cache save: path "absent" matched nothing',
        'warning: job "build": artifacts path "missing/**" matched nothing',
        'warning: job "build": artifacts path "only-logs": everything it matched is excluded',
    ]
    restore = _section_lines(result, "build", "cache_restore")
    assert 'warning: cache key files: "nothing/*.lock" matched nothing' in restore
    assert 'warning: cache save: path "absent" matched nothing' in _section_lines(result, "build", "cache_save")
    assert 'warning: artifacts path "missing/**" matched nothing' in _section_lines(result, "build", "artifact_extract")
    quiet = run_loom(repo, "run", "--local", "-q")
    assert quiet.code == 0 and _warnings(quiet) == []


def test_a_bypassed_quarantined_key_warns(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    build:
      stage: s
      target: linux
      cache:
        key: deps-v1
        paths: [deps]
      script: ["mkdir -p deps && echo d > deps/d"]
    """)
    assert run_loom(repo, "run", "--local").code == 0
    Quarantine(repo / ".loom/.runtime/cache").add("deps-v1", "diverged", "r-off", "r-on", [])
    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    assert _warnings(result) == ['warning: job "build": cache default: key deps-v1 is quarantined; not restored '
                                 "(`loom cache release deps-v1` allows it again)"]


# -- item 13: a bad cache entry is a miss with a warning; a save that cannot be made is skipped --------
def _entry_archive(repo: Path, key: str) -> Path:
    return next((repo / ".loom/.runtime/cache/entries" / key).glob("*.tar.zst"))


def _tar(*members: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor().compress(buf.getvalue())


BAD_ENTRIES = """
version: v1
stages: [s]
build:
  stage: s
  target: linux
  cache:
    - {name: long, key: long, paths: [c1]}
    - {name: corrupt, key: corrupt, paths: [c2]}
    - {name: refused, key: refused, paths: [c3]}
    - {name: torn, key: torn, paths: [c4]}
  script:
    - for d in c1 c2 c3 c4; do test -f $d/ok || { mkdir -p $d && echo ok > $d/ok; }; done
"""


def test_bad_cache_entries_are_misses_with_warnings(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", BAD_ENTRIES)
    assert run_loom(repo, "run", "--local").code == 0
    _entry_archive(repo, "long").write_bytes(_tar((f"c1/{'n' * 300}", b"x")))  # a name no file system holds
    _entry_archive(repo, "corrupt").write_bytes(b"not zstd at all")
    _entry_archive(repo, "refused").write_bytes(_tar(("/tmp/loom-refused-abs", b"x")))
    (repo / ".loom/.runtime/cache/entries/torn/meta.json").write_text('{"key": "to')
    result = run_loom(repo, "run", "--local")
    assert result.code == 0, result.stderr
    warnings = _warnings(result)
    assert len(warnings) == 4, result.stderr
    prefix = 'warning: job "build": cache '
    assert warnings[0].startswith(prefix + 'long: entry long: cannot be unpacked (File name too long: c1/nnn')
    assert warnings[1].startswith(prefix + 'corrupt: entry corrupt: archive is corrupt')
    assert warnings[2].startswith(prefix + 'refused: entry refused: member ')
    assert warnings[3].startswith(prefix + 'torn: entry torn: its metadata is unreadable')
    assert all(w.endswith("; treated as a miss") and len(w) < 300 for w in warnings)
    restore = load(result.logs_dir / "jobs/build/system/cache_restore/summary.json")
    assert [c["status"] for c in restore["caches"]] == ["miss"] * 4
    assert not Path("/tmp/loom-refused-abs").exists()
    # Every miss saved a good entry again: the next run hits all four.
    again = run_loom(repo, "run", "--local", "-v")
    assert again.code == 0 and again.stderr.count(": hit\n") == 4, again.stderr


def test_a_save_the_store_cannot_make_is_skipped_and_the_job_passes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", textwrap.dedent("""
    version: v1
    stages: [s]
    build:
      stage: s
      target: linux
      cache:
        - {name: odd, key: odd, paths: [deps]}
      script:
        - mkdir -p deps && echo ok > deps/ok && echo bad > "deps/$(printf 'bad\\377')"
    """))
    first = run_loom(repo, "run", "--local")
    assert first.code == 0, first.stderr
    assert _warnings(first) == ['warning: job "build": cache save: deps/bad\\xff: the name is not UTF-8; skipped']
    (repo / ".loom/.runtime/cache/tmp").rmdir()
    (repo / ".loom/.runtime/cache/tmp").write_text("a file where the store keeps its temp folder")
    second = run_loom(repo, "run", "--local")
    assert second.code == 0, second.stderr
    [warning] = [w for w in _warnings(second) if "not saved" in w]
    assert warning.startswith('warning: job "build": cache odd: not saved under odd: File exists')
    assert second.job_summary("build")["status"] == "success"
