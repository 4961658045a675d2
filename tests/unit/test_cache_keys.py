"""Cache keys (spec §6.2): stable across runs and checkouts, sensitive to one byte, templates, fallbacks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from loomrun.cache.keys import CacheKeyError, compute_key, fallback_keys
from loomrun.cache.store import key_dirname
from loomrun.workflow.model import CacheSpec, KeyFiles, KeyPrefix, KeyTemplate


def _key(spec: CacheSpec, ws: Path) -> tuple[str, list[str]]:
    return compute_key(spec, job_name="build", workspace=ws)


def _checkout(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "pnpm-lock.yaml").write_text("lockfileVersion: 9\n")
    (root / "sub" / "package.json").write_text('{"name": "x"}\n')
    (root / "sub" / "other.txt").write_text("not matched\n")
    return root


FILES = CacheSpec(name=None, paths=("node_modules",), key=KeyFiles(files=("pnpm-lock.yaml", "**/package.json"),
                                                                   prefix="deps"))


def test_files_key_is_stable_across_calls_and_checkouts(tmp_path: Path) -> None:
    a, b = _checkout(tmp_path / "a"), _checkout(tmp_path / "b")
    key_a1, warn = _key(FILES, a)
    key_a2, _ = _key(FILES, a)
    key_b, _ = _key(FILES, b)
    assert key_a1 == key_a2 == key_b
    assert warn == []
    assert key_a1.startswith("deps-") and len(key_a1) == len("deps-") + 64


def test_files_key_framing_is_the_documented_one(tmp_path: Path) -> None:
    ws = _checkout(tmp_path / "ws")
    expected = hashlib.sha256()
    for rel in ("pnpm-lock.yaml", "sub/package.json"):
        data = (ws / rel).read_bytes()
        expected.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    assert _key(FILES, ws)[0] == f"deps-{expected.hexdigest()}"


def test_one_changed_byte_changes_the_files_key(tmp_path: Path) -> None:
    ws = _checkout(tmp_path / "ws")
    before, _ = _key(FILES, ws)
    (ws / "sub" / "package.json").write_text('{"name": "y"}\n')
    after, _ = _key(FILES, ws)
    assert before != after
    (ws / "sub" / "other.txt").write_text("changed but not matched\n")
    assert _key(FILES, ws)[0] == after


def test_moving_bytes_between_path_and_content_changes_the_key(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "a").write_text("1bc")
    (two / "a1").write_text("bc")
    spec = CacheSpec(name=None, paths=("x",), key=KeyFiles(files=("a*",), prefix="p"))
    assert _key(spec, one)[0] != _key(spec, two)[0]


def test_no_matching_file_gives_the_empty_digest_and_a_warning(tmp_path: Path) -> None:
    spec = CacheSpec(name=None, paths=("x",), key=KeyFiles(files=("missing.lock",), prefix="deps"))
    key, warnings = _key(spec, tmp_path)
    assert key == "deps-" + hashlib.sha256(b"").hexdigest()
    assert len(warnings) == 1 and "no file matched" in warnings[0]


def test_files_glob_outside_the_workspace_is_refused(tmp_path: Path) -> None:
    spec = CacheSpec(name=None, paths=("x",), key=KeyFiles(files=("../secret",), prefix="deps"))
    with pytest.raises(CacheKeyError, match=r"\.\."):
        _key(spec, tmp_path)


def test_keys_arrive_expanded_and_are_used_as_they_are(tmp_path: Path) -> None:
    """The supervisor expands keys (tests/unit/test_job_env.py); a `$` left in one is the user's."""
    assert _key(CacheSpec(name=None, paths=("x",), key="node-20-$HOME"), tmp_path)[0] == "node-20-$HOME"
    assert _key(CacheSpec(name=None, paths=("x",), key=KeyPrefix(prefix="tools-$")), tmp_path)[0] == "tools-$"
    assert _key(CacheSpec(name=None, paths=("x",), key=KeyTemplate(template="b/$x")), tmp_path)[0] == "b/$x"
    assert _key(CacheSpec(name=None, paths=("x",)), tmp_path)[0] == "build-default"
    assert _key(CacheSpec(name="pnpm", paths=("x",)), tmp_path)[0] == "build-pnpm"


def test_empty_and_control_character_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CacheKeyError, match="empty"):
        _key(CacheSpec(name=None, paths=("x",), key="  "), tmp_path)
    with pytest.raises(CacheKeyError, match="control"):
        _key(CacheSpec(name=None, paths=("x",), key="a\nb"), tmp_path)


def test_fallbacks_keep_their_order_without_duplicates_empties_or_the_primary() -> None:
    spec = CacheSpec(name=None, paths=("x",), key="deps-feature",
                     fallback_keys=("deps-feature", "deps-main", " ", "deps-build", "deps-main"))
    fallbacks, warnings = fallback_keys(spec, primary="deps-feature")
    assert fallbacks == ["deps-main", "deps-build"]
    assert len(warnings) == 1 and "dropped" in warnings[0]


@pytest.mark.parametrize("key", ["a/b", "..", "../../etc/passwd", ".hidden", "x" * 400, "ключ", "a%2Fb"])
def test_key_dirnames_are_safe_file_names(key: str) -> None:
    name = key_dirname(key)
    assert "/" not in name and name not in (".", "..") and not name.startswith(".")
    assert len(name.encode()) <= 200


def test_key_dirnames_are_injective() -> None:
    keys = ["a/b", "a%2Fb", "a_b", ".x", "%2Ex", "x" * 400, "x" * 401]
    assert len({key_dirname(k) for k in keys}) == len(keys)
