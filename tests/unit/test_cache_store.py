"""The cache store (spec §6.3): real tar + zstd archives on disk, round trips, fallbacks, quarantine,
hostile archives, and two real processes saving the same key at once."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import zstandard

from loomrun.cache.store import CacheStore
from loomrun.cache.unpack import CacheEntryError, UnsafeArchiveError, unpack


def _tree(ws: Path) -> None:
    (ws / "deps" / "pkg" / "bin").mkdir(parents=True)
    (ws / "deps" / "empty").mkdir()
    (ws / "deps" / "pkg" / "index.js").write_text("module.exports = 1\n")
    tool = ws / "deps" / "pkg" / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    (ws / "deps" / "pkg" / "readonly.txt").write_text("ro\n")
    (ws / "deps" / "pkg" / "readonly.txt").chmod(0o444)
    (ws / "deps" / "blob.bin").write_bytes(os.urandom(300_000))
    (ws / "deps" / "link-to-index").symlink_to("pkg/index.js")
    (ws / "deps" / "dangling").symlink_to("does-not-exist")
    (ws / "deps" / ".hidden").write_text("dot\n")
    (ws / "deps" / "pkg" / "bin").chmod(0o750)
    (ws / "build.log").write_text("not cached\n")


def _snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """path -> (kind, permission bits, content or link target)."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), full.read_bytes().hex())
    return out


@pytest.fixture
def store(tmp_path: Path) -> CacheStore:
    return CacheStore(tmp_path / "cache")


def test_save_then_restore_reproduces_files_modes_and_symlinks(tmp_path: Path, store: CacheStore) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    saved = store.save("deps-1", src, ["deps"], source_run="loom-run-local-1")
    assert saved.total_size > 300_000 and saved.archive_size > 0
    dst = tmp_path / "dst"
    dst.mkdir()
    result = store.restore(["deps-1"], dst)
    assert (result.status, result.key, result.fallback_index) == ("hit", "deps-1", None)
    expected = {k: v for k, v in _snapshot(src).items() if k.startswith("deps")}
    assert _snapshot(dst) == expected
    assert not [p for p in dst.iterdir() if p.name.startswith(".loom-cache-restore")]


def test_metadata_lists_every_file_with_sha256_size_and_mode(tmp_path: Path, store: CacheStore) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    store.save("deps-1", src, ["deps/pkg/**"], source_run="run-7")
    meta = store.entry("deps-1")
    assert meta is not None and meta["source_run"] == "run-7" and meta["key"] == "deps-1"
    files = {f["path"]: f for f in meta["files"]}
    tool = files["deps/pkg/bin/tool"]
    assert tool["mode"] == 0o755 and tool["size"] == len("#!/bin/sh\necho hi\n")
    import hashlib
    assert tool["sha256"] == hashlib.sha256((src / "deps/pkg/bin/tool").read_bytes()).hexdigest()
    assert meta["total_size"] == sum(f.get("size", 0) for f in meta["files"])
    assert [e["key"] for e in store.list()] == ["deps-1"]


def test_restore_overwrites_and_merges_into_an_existing_tree(tmp_path: Path, store: CacheStore) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    store.save("k", src, ["deps"], source_run="r")
    dst = tmp_path / "dst"
    (dst / "deps" / "pkg").mkdir(parents=True)
    (dst / "deps" / "pkg" / "index.js").write_text("stale\n")
    (dst / "deps" / "mine.txt").write_text("kept\n")
    (dst / "deps" / "blob.bin").symlink_to("/etc/hostname")  # a link in the way is replaced, not followed
    store.restore(["k"], dst)
    assert (dst / "deps/pkg/index.js").read_text() == "module.exports = 1\n"
    assert (dst / "deps/mine.txt").read_text() == "kept\n"
    assert not (dst / "deps/blob.bin").is_symlink()
    assert (dst / "deps/blob.bin").read_bytes() == (src / "deps/blob.bin").read_bytes()


def test_fallback_hit_miss_and_quarantined_keys(tmp_path: Path, store: CacheStore) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    store.save("deps-main", src, ["deps"], source_run="r1")
    store.save("deps-old", src, ["build.log"], source_run="r0")
    dst = tmp_path / "dst"
    dst.mkdir()
    result = store.restore(["deps-feature", "deps-main", "deps-old"], dst)
    assert (result.status, result.key, result.fallback_index) == ("fallback_hit", "deps-main", 0)
    assert result.tried == ("deps-feature", "deps-main")

    store.quarantine.add("deps-main", "diverged", "run-a", "run-b", [])
    dst2 = tmp_path / "dst2"
    dst2.mkdir()
    result = store.restore(["deps-feature", "deps-main", "deps-old"], dst2)
    assert (result.status, result.key, result.quarantined) == ("fallback_hit", "deps-old", ("deps-main",))
    assert (dst2 / "build.log").exists() and not (dst2 / "deps").exists()

    miss = store.restore(["deps-main", "nothing"], dst2)
    assert (miss.status, miss.key, miss.quarantined) == ("miss", None, ("deps-main",))
    store.quarantine.release("deps-main")
    assert store.restore(["deps-main"], dst2).status == "hit"


def test_keys_with_slashes_and_dots_stay_inside_the_store(tmp_path: Path, store: CacheStore) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    store.save("../../escape/..", src, ["build.log"], source_run="r")
    assert not (tmp_path / "escape").exists()
    assert store.entry("../../escape/..") is not None
    assert store.entry("escape") is None


def test_clear_one_and_all(tmp_path: Path, store: CacheStore) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    for key in ("a", "b", "c"):
        store.save(key, src, ["build.log"], source_run="r")
    assert store.clear("b") == 1
    assert store.clear("b") == 0
    assert [e["key"] for e in store.list()] == ["a", "c"]
    assert store.clear() == 2
    assert store.list() == []


def test_resaving_a_key_leaves_one_archive(tmp_path: Path, store: CacheStore) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    store.save("k", src, ["deps"], source_run="r1")
    store.save("k", src, ["build.log"], source_run="r2")
    entry_dirs = list((store.root / "entries").iterdir())
    assert len(entry_dirs) == 1
    assert len(list(entry_dirs[0].glob("*.tar.zst"))) == 1
    assert store.entry("k")["source_run"] == "r2"  # type: ignore[index]
    assert list((store.root / "tmp").iterdir()) == []


# ---- hostile archives -------------------------------------------------------------------------


def _archive(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return io.BytesIO(zstandard.ZstdCompressor().compress(raw.getvalue()))


def _file(name: str, data: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


HOSTILE = {
    "absolute": ([_file("ok.txt"), _file("/tmp/loom-hostile-abs")], "absolute"),
    "dotdot": ([_file("ok.txt"), _file("a/../../outside.txt")], r"'\.\.'"),
    "symlink to /etc then a file through it": ([_link("etc", "/etc"), _file("etc/loom-pwned")], "absolute"),
    "relative escaping symlink": ([_link("up", "../.."), _file("up/x")], "outside"),
    "symlink chain escaping": ([_link("s", "."), _link("t", "s/..")], "resolves outside"),
    "write through an inside symlink": ([_file("real/x"), _link("l", "real"), _file("l/y")], "through the symlink"),
    "hardlink outside": ([_link("h", "/etc/passwd", tarfile.LNKTYPE)], "hard link"),
    "hardlink with ..": ([_link("h", "../outside", tarfile.LNKTYPE)], "hard link"),
    "hardlink to a workspace file not in the archive": ([_link("h", "pre.txt", tarfile.LNKTYPE)], "hard link"),
    "fifo": ([_special("p", tarfile.FIFOTYPE)], "special"),
    "char device": ([_special("c", tarfile.CHRTYPE)], "special"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archives_are_refused_whole(tmp_path: Path, case: str) -> None:
    members, message = HOSTILE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    ws = outside / "ws" / "inner"
    ws.mkdir(parents=True)
    (ws / "pre.txt").write_text("before\n")
    before_outside = _snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=message):
        unpack(_archive(members), ws)
    assert _snapshot(tmp_path) == before_outside  # nothing written anywhere, not even ok.txt
    assert not Path("/tmp/loom-hostile-abs").exists()
    assert not Path("/etc/loom-pwned").exists()


def test_a_hostile_entry_in_the_store_is_refused_and_the_next_key_is_tried(
    tmp_path: Path, store: CacheStore
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    store.save("evil", src, ["build.log"], source_run="r")
    store.save("good", src, ["build.log"], source_run="r")
    meta = store.entry("evil")
    assert meta is not None
    archive_path = next((store.root / "entries" / "evil").glob("*.tar.zst"))
    archive_path.write_bytes(_archive([_link("etc", "/etc"), _file("etc/loom-pwned")]).getvalue())
    ws = tmp_path / "ws"
    ws.mkdir()
    result = store.restore(["evil", "good"], ws)
    assert (result.status, result.key) == ("fallback_hit", "good")
    assert len(result.refused) == 1 and result.refused[0].startswith("evil: ")
    assert not Path("/etc/loom-pwned").exists()


def test_a_corrupt_archive_is_refused(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    with pytest.raises(CacheEntryError, match="corrupt"):
        unpack(io.BytesIO(b"this is not zstd"), ws)
    assert list(ws.iterdir()) == []


# ---- concurrency ------------------------------------------------------------------------------

SAVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from loomrun.cache.store import CacheStore
    store = CacheStore(Path(sys.argv[1]))
    sys.stdin.readline()  # start together
    for _ in range(int(sys.argv[4])):
        store.save("shared", Path(sys.argv[2]), ["deps"], source_run=sys.argv[3])
    print("ok")
""")


def test_two_processes_saving_the_same_key_leave_one_complete_entry(tmp_path: Path, store: CacheStore) -> None:
    workspaces = []
    for name in ("one", "two"):
        ws = tmp_path / name
        (ws / "deps").mkdir(parents=True)
        for i in range(40):
            (ws / "deps" / f"f{i}.txt").write_text(f"{name} {i}\n" * 2000)
        workspaces.append(ws)
    procs = [
        subprocess.Popen([sys.executable, "-c", SAVER, str(store.root), str(ws), ws.name, "5"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for ws in workspaces
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [proc.communicate(timeout=60) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    entry_dir = store.root / "entries" / "shared"
    assert len(list(entry_dir.glob("*.tar.zst"))) == 1
    assert list((store.root / "tmp").iterdir()) == []
    meta = json.loads((entry_dir / "meta.json").read_text())
    winner = meta["source_run"]
    dst = tmp_path / "dst"
    dst.mkdir()
    assert store.restore(["shared"], dst).status == "hit"
    restored = {p.name: p.read_text() for p in (dst / "deps").iterdir()}
    assert restored == {p.name: p.read_text() for p in (tmp_path / winner / "deps").iterdir()}


def test_inside_hard_links_are_restored_as_links(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    unpack(_archive([_file("a/data", b"same\n"), _link("a/alias", "a/data", tarfile.LNKTYPE)]), ws)
    assert (ws / "a/alias").read_bytes() == b"same\n"
    assert (ws / "a/alias").stat().st_ino == (ws / "a/data").stat().st_ino


def test_an_existing_workspace_symlink_is_never_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "deps").symlink_to(target)
    unpack(_archive([_file("deps/x", b"cached\n")]), ws)
    assert list(target.iterdir()) == []
    assert not (ws / "deps").is_symlink()
    assert (ws / "deps/x").read_bytes() == b"cached\n"


def test_archives_are_standard_tar_that_gnu_tar_extracts(tmp_path: Path, store: CacheStore) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    long_dir = src / "deps" / ("d" * 90) / ("e" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / "long-name-file.txt").write_text("long\n")
    (src / "deps" / "ünïcödé.txt").write_text("utf-8\n")
    (src / "deps" / ("l" * 120)).symlink_to("x" * 120)
    store.save("k", src, ["deps"], source_run="r")
    archive = next((store.root / "entries" / "k").glob("*.tar.zst"))
    raw = zstandard.ZstdDecompressor().stream_reader(archive.open("rb")).read()
    by_tar = tmp_path / "by-tar"
    by_tar.mkdir()
    subprocess.run(["tar", "-x", "-C", str(by_tar)], input=raw, check=True)
    ours = tmp_path / "ours"
    ours.mkdir()
    store.restore(["k"], ours)
    expected = {k: v for k, v in _snapshot(src).items() if k.startswith("deps")}
    assert _snapshot(by_tar) == expected
    assert _snapshot(ours) == expected


def test_unreadable_metadata_is_a_miss_and_clear_removes_leftovers(tmp_path: Path, store: CacheStore) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    store.save("k", src, ["deps"], source_run="r")
    (store.root / "entries" / "k" / "meta.json").write_text("{torn")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    leftover = store.root / "tmp" / f"{dead.stdout.strip()}-abc.tar.zst"
    leftover.write_bytes(b"half")
    ws = tmp_path / "ws"
    ws.mkdir()
    assert store.restore(["k"], ws).status == "miss"
    assert store.list() == []
    store.clear()
    assert list((store.root / "entries").iterdir()) == []
    assert not leftover.exists()


def test_entries_the_file_system_or_the_store_cannot_use_are_refused_with_a_reason(
    tmp_path: Path, store: CacheStore
) -> None:
    """A member name over 255 bytes (ENAMETOOLONG), torn metadata and an entry that is a link are
    each a refused entry (a miss with a reason), never an exception out of restore."""
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    for key in ("long", "torn", "good"):
        store.save(key, src, ["build.log"], source_run="r")
    archive = next((store.root / "entries" / "long").glob("*.tar.zst"))
    archive.write_bytes(_archive([_file("d/" + "n" * 300)]).getvalue())
    (store.root / "entries" / "torn" / "meta.json").write_text('{"key": ')
    outside = tmp_path / "outside-entry"
    (store.root / "entries" / "good").rename(outside)
    (store.root / "entries" / "linked").symlink_to(outside)
    ws = tmp_path / "ws"
    ws.mkdir()
    result = store.restore(["long", "torn", "linked"], ws)
    assert result.status == "miss"
    assert result.refused[0].startswith("long: cannot be unpacked (File name too long: d/nnn")
    assert len(result.refused[0]) < 200
    assert result.refused[1].startswith("torn: its metadata is unreadable")
    assert result.refused[2] == "linked: the entry is a symlink (not followed out of the store)"
    assert list(ws.iterdir()) == []


def test_saving_nothing_warns(tmp_path: Path, store: CacheStore) -> None:
    result = store.save("k", tmp_path, ["nothing-here"], source_run="r")
    assert result.files == 0 and any("no file matched" in w for w in result.warnings)


def test_restores_during_concurrent_saves_always_see_a_whole_entry(tmp_path: Path, store: CacheStore) -> None:
    versions = {}
    for name in ("one", "two"):
        ws = tmp_path / name
        (ws / "deps").mkdir(parents=True)
        for i in range(30):
            (ws / "deps" / f"f{i}.txt").write_text(f"{name} {i}\n" * 500)
        versions[name] = {p.name: p.read_text() for p in (ws / "deps").iterdir()}
    store.save("shared", tmp_path / "one", ["deps"], source_run="one")
    savers = [
        subprocess.Popen([sys.executable, "-c", SAVER, str(store.root), str(tmp_path / name), name, "15"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("one", "two")
    ]
    for proc in savers:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    seen = set()
    try:
        while any(proc.poll() is None for proc in savers):
            dst = tmp_path / f"dst{len(seen)}-{os.urandom(4).hex()}"
            dst.mkdir()
            result = store.restore(["shared"], dst)
            assert result.status == "hit" and result.refused == ()
            restored = {p.name: p.read_text() for p in (dst / "deps").iterdir()}
            assert restored in versions.values()
            seen.add(restored["f0.txt"].split()[0])
    finally:
        outcomes = [proc.communicate(timeout=60) for proc in savers]
    assert [proc.returncode for proc in savers] == [0, 0], outcomes
