"""Artifact trees as both providers move them on the host (`workers.trees.copy_into`, `loomrun.globs`
with `EMPTY_DIRS`), on real files: a restore where the tree wins whatever kind of path was there,
links kept and never followed, and the empty folders an artifact's patterns name. No engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loomrun.globs import EMPTY_DIRS, match_paths
from tests.docker.helpers import listing
from workers.trees import copy_into


def test_copy_into_replaces_every_kind_of_path_and_never_writes_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("untouched\n")
    dest = tmp_path / "ws"
    (dest / "conf").mkdir(parents=True)
    (dest / "conf" / "inner").write_text("inner\n")
    (dest / "data").write_text("old\n")
    os.symlink(outside, dest / "lib")  # a link to a folder outside, where the tree has a folder
    os.symlink(outside / "victim", dest / "plain.txt")  # a link where the tree has a file
    os.symlink("/old", dest / "so")
    (dest / "keep.txt").write_text("kept\n")
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "victim").write_text("from the tree\n")
    (src / "conf").write_text("new conf\n")
    (src / "data" / "sub").mkdir(parents=True)
    (src / "plain.txt").write_text("plain\n")
    os.symlink("lib/victim", src / "so")
    os.symlink(outside, src / "link-to-folder")
    (src / "empty").mkdir()
    for _ in range(2):  # the second time onto itself: every path exists, links included
        copy_into(src, dest)
        assert listing(dest) == {
            "conf": "new conf\n", "data": "/", "data/sub": "/", "empty": "/", "keep.txt": "kept\n",
            "lib": "/", "lib/victim": "from the tree\n", "link-to-folder": f"-> {outside}", "plain.txt": "plain\n",
            "so": "-> lib/victim",
        }  # fmt: skip
    assert listing(outside) == {"victim": "untouched\n"}


def test_copy_into_fails_with_the_path_that_could_not_be_written(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "ws"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("x")
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "f").mkdir()  # a folder where the tree has a file: replaced...
    (dest / "sub" / "f" / "g").write_text("y")
    copy_into(src, dest)
    assert (dest / "sub" / "f").read_text() == "x"
    (src / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(src / "fifo")  # ...but a named pipe cannot be copied (and must not hang the copy)
    with pytest.raises(OSError):
        copy_into(src, dest)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    for folder in ("a/empty", "a/full", "b/c/d", "nested/x/y", ".hidden"):
        (root / folder).mkdir(parents=True)
    (root / "a" / "full" / "f.txt").write_text("f")
    (root / "outside").mkdir()
    os.symlink(root / "outside", root / "a" / "link")  # a link to an (empty) folder: never entered
    os.symlink("../a", root / "b" / "up")
    return root


@pytest.mark.parametrize(("patterns", "exclude", "expected"), [
    (["a"], [], {"a/empty"}),
    (["a/empty"], [], {"a/empty"}),
    (["a/*"], [], {"a/empty"}),
    (["b"], [], {"b/c/d"}),
    (["**"], [], {"a/empty", "b/c/d", "nested/x/y", ".hidden", "outside"}),
    (["**/*.txt", "a/full"], [], set()),
    (["b/up"], [], set()),  # a link to a folder is listed as a link, never walked
    (["b/up/empty"], [], {"b/up/empty"}),  # a literal path through a link inside the workspace
    (["."], ["nested", "a/empty"], {"b/c/d", ".hidden", "outside"}),
    (["missing", "missing/**"], [], set()),
])  # fmt: skip
def test_empty_folders_named_or_held_by_the_patterns(
    tree: Path, patterns: list[str], exclude: list[str], expected: set[str]
) -> None:
    found = match_paths(tree, patterns, exclude, dirs=EMPTY_DIRS)
    assert {rel for rel in found if (tree / rel).is_dir() and not (tree / rel).is_symlink()} == expected
