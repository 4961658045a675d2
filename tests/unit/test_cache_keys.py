"""Cache keys (spec §6.2): stable across runs and checkouts, sensitive to one byte, templates, fallbacks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from loomrun.cache.keys import CacheKeyError, compute_key, expand, expand_fallbacks
from loomrun.cache.store import key_dirname
from loomrun.workflow.model import CacheSpec, KeyFiles, KeyPrefix, KeyTemplate

IDS = {"job_name": "build", "job_id": "build", "run_id": "loom-run-local-1", "pipeline_id": "loom-local-1",
       "head_sha": "abc123"}


def _key(spec: CacheSpec, ws: Path, variables: dict[str, str] | None = None, **over: str) -> tuple[str, list[str]]:
    ids = {**IDS, **over}
    return compute_key(spec, variables=variables or {}, workspace=ws, **ids)


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
    key_a2, _ = _key(FILES, a, run_id="loom-run-local-2")
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


def test_string_prefix_template_and_default_keys(tmp_path: Path) -> None:
    variables = {"NODE": "20", "CI_COMMIT_REF_SLUG": "main"}
    string = CacheSpec(name=None, paths=("x",), key="node-$NODE-${CI_COMMIT_REF_SLUG}-$$")
    assert _key(string, tmp_path, variables)[0] == "node-20-main-$"
    prefix = CacheSpec(name=None, paths=("x",), key=KeyPrefix(prefix="tools-$NODE"))
    assert _key(prefix, tmp_path, variables)[0] == "tools-20"
    template = CacheSpec(name=None, paths=("x",),
                         key=KeyTemplate(template="$job_name/$job_id/$run_id/$pipeline_id/$head_sha/${NODE}"))
    assert _key(template, tmp_path, variables)[0] == "build/build/loom-run-local-1/loom-local-1/abc123/20"
    assert _key(CacheSpec(name=None, paths=("x",)), tmp_path)[0] == "build-default"
    assert _key(CacheSpec(name="pnpm", paths=("x",)), tmp_path)[0] == "build-pnpm"


def test_template_builtins_win_over_variables_and_unset_names_warn(tmp_path: Path) -> None:
    spec = CacheSpec(name=None, paths=("x",), key=KeyTemplate(template="$job_name-$NOPE"))
    key, warnings = _key(spec, tmp_path, {"job_name": "shadow"})
    assert key == "build-"
    assert any("$NOPE" in w for w in warnings)


def test_empty_and_control_character_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CacheKeyError, match="empty"):
        _key(CacheSpec(name=None, paths=("x",), key="$UNSET"), tmp_path)
    with pytest.raises(CacheKeyError, match="control"):
        _key(CacheSpec(name=None, paths=("x",), key="a\nb"), tmp_path)


def test_fallbacks_expand_in_order_without_duplicates_or_the_primary(tmp_path: Path) -> None:
    spec = CacheSpec(name=None, paths=("x",), key="deps-$REF",
                     fallback_keys=("deps-$REF", "deps-${DEFAULT_REF}", "deps-$job_name", "$UNSET", "deps-main"))
    variables = {"REF": "feature", "DEFAULT_REF": "main"}
    primary, _ = _key(spec, tmp_path, variables)
    fallbacks, warnings = expand_fallbacks(spec, primary=primary, variables=variables, **IDS)
    assert primary == "deps-feature"
    assert fallbacks == ["deps-main", "deps-build"]
    assert any("dropped" in w for w in warnings)


def test_expand_leaves_plain_text_alone() -> None:
    assert expand("no vars here: 100%", {}) == "no vars here: 100%"


@pytest.mark.parametrize("key", ["a/b", "..", "../../etc/passwd", ".hidden", "x" * 400, "ключ", "a%2Fb"])
def test_key_dirnames_are_safe_file_names(key: str) -> None:
    name = key_dirname(key)
    assert "/" not in name and name not in (".", "..") and not name.startswith(".")
    assert len(name.encode()) <= 200


def test_key_dirnames_are_injective() -> None:
    keys = ["a/b", "a%2Fb", "a_b", ".x", "%2Ex", "x" * 400, "x" * 401]
    assert len({key_dirname(k) for k in keys}) == len(keys)
