"""`workers.trees`: artifact copies on real trees (links kept, the source's version wins over every
kind of path already in the workspace, never writing through a link) and a real running program."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from workers.trees import copy_into, copy_paths


def _kinds(root: Path) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                out[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", full.read_text())
    return out


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    src = tmp_path / "staged"
    (src / "out" / "empty" / "deeper").mkdir(parents=True)
    (src / "out" / "sub").mkdir()
    (src / "out" / "sub" / "s.txt").write_text("sub")
    (src / "out" / "lib.so.1").write_text("v1")
    (src / "out" / "lib.so").symlink_to("lib.so.1")
    (src / "out" / "abs").symlink_to("/etc/hostname")
    (src / "out" / "linkdir").symlink_to("sub")
    (src / "out" / "was_dir").write_text("file now")
    (src / "out" / "was_file").mkdir()
    (src / "out" / "was_file" / "x").write_text("x")
    return src


def test_copy_into_an_empty_workspace_keeps_links_and_empty_folders(tmp_path: Path, staged: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    copy_into(staged, ws)
    assert _kinds(ws) == _kinds(staged)


def test_copy_into_replaces_every_kind_of_path_in_the_way(tmp_path: Path, staged: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    ws = tmp_path / "ws"
    (ws / "out" / "was_dir" / "d").mkdir(parents=True)
    (ws / "out" / "was_dir" / "d" / "y").write_text("y")
    (ws / "out" / "was_file").write_text("a file where a folder goes")
    (ws / "out" / "lib.so").write_text("a file where a link goes")
    (ws / "out" / "lib.so.1").symlink_to("/etc/passwd")  # a link where a file goes: replaced, not written through
    (ws / "out" / "abs").symlink_to("elsewhere")
    (ws / "out" / "linkdir").mkdir()
    (ws / "out" / "linkdir" / "z").write_text("z")
    (ws / "out" / "sub").symlink_to(outside)  # a link where a folder goes
    (ws / "out" / "extra.txt").write_text("not in the artifact: stays")
    passwd = Path("/etc/passwd").read_bytes()
    copy_into(staged, ws)
    expected = _kinds(staged)
    expected["out/extra.txt"] = ("file", "not in the artifact: stays")
    assert _kinds(ws) == expected
    assert list(outside.iterdir()) == []
    assert Path("/etc/passwd").read_bytes() == passwd
    assert not [p for p in (ws / "out").iterdir() if p.name.startswith(".loom-")]  # no temp file left


def test_copy_into_replaces_a_running_program(tmp_path: Path) -> None:
    """Writing over a running executable fails with ETXTBSY; a rename over it does not."""
    ws, src = tmp_path / "ws", tmp_path / "src"
    (ws / "bin").mkdir(parents=True)
    (src / "bin").mkdir(parents=True)
    sleeper = shutil.which("sleep")
    assert sleeper is not None
    shutil.copy2(sleeper, ws / "bin" / "tool")
    (src / "bin" / "tool").write_text("#!/bin/sh\necho new\n")
    (src / "bin" / "tool").chmod(0o755)
    running = subprocess.Popen([str(ws / "bin" / "tool"), "30"])
    try:
        copy_into(src, ws)
    finally:
        running.kill()
        running.wait()
    assert subprocess.run([str(ws / "bin" / "tool")], capture_output=True, text=True, check=True).stdout == "new\n"


def test_copy_into_closes_read_only_folders_last(tmp_path: Path) -> None:
    src, ws = tmp_path / "src", tmp_path / "ws"
    (src / "ro" / "inner").mkdir(parents=True)
    (src / "ro" / "inner" / "f").write_text("f")
    (src / "ro" / "inner").chmod(0o555)
    (src / "ro").chmod(0o555)
    ws.mkdir()
    try:
        copy_into(src, ws)
        assert stat.S_IMODE((ws / "ro").stat().st_mode) == 0o555
        assert (ws / "ro" / "inner" / "f").read_text() == "f"
    finally:
        for root in (src, ws):
            for d in (root / "ro", root / "ro" / "inner"):
                if d.exists():
                    d.chmod(0o755)


def test_copy_paths_copies_files_links_and_empty_folders_and_skips_specials(tmp_path: Path) -> None:
    ws, dest = tmp_path / "ws", tmp_path / "dest"
    (ws / "out" / "empty").mkdir(parents=True)
    (ws / "out" / "f").write_text("f")
    (ws / "out" / "l").symlink_to("f")
    os.mkfifo(ws / "out" / "pipe")
    dest.mkdir()
    copied, skipped = copy_paths(ws, ["out/empty", "out/f", "out/l", "out/pipe"], dest)
    assert copied == ["out/empty", "out/f", "out/l"] and skipped == ["out/pipe"]
    assert _kinds(dest) == {"out": ("dir", ""), "out/empty": ("dir", ""), "out/f": ("file", "f"),
                            "out/l": ("link", "f")}
