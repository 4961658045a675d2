"""Property test (spec §10): random and mutated YAML never produces a traceback; `loom check` and
`loom compile` end with exit 0 or 1 and one clear line per error. In-process through click's
CliRunner for speed (the check receipt is still written by the real one-shot writer child)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loomrun.cli import cli

VALID = {
    "version": "v1", "stages": ["build", "test"], "variables": {"A": "1"},
    "default": {"target": "linux"},
    ".tpl": {"variables": {"B": "2"}, "cache": {"paths": [".c"]}},
    "build": {"stage": "build", "script": ["echo hi"], "extends": ".tpl"},
    "test": {"stage": "test", "script": ["echo t"], "needs": ["build"], "timeout": "10m",
             "limits": {"memory": "1g"}, "artifacts": {"paths": ["dist"]}},
}
ERROR_LINE = re.compile(r"^[^\s:]+(\.ya?ml)?(:\d+)? \S.*$")

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=20), st.sampled_from(["v1", "linux", "build", ".tpl", "/abs", "../x", "2g"]))
keys = st.one_of(st.text(max_size=12), st.sampled_from(
    ["version", "stages", "script", "stage", "target", "needs", "extends", "cache", "image", "variables",
     "include", "default", "workflow", "rules", "if", "paths", "key", "limits", "secrets", "local"]))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=5)), max_leaves=25)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(yaml.safe_dump(VALID))
    for _ in range(draw(st.integers(1, 4))):
        job = draw(st.sampled_from(sorted(doc)))
        if isinstance(doc[job], dict) and doc[job] and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(doc[job])))
            doc[job][key] = draw(trees)
        elif draw(st.booleans()):
            doc[job] = draw(trees)
        else:
            doc.pop(job)
    return doc


def as_text(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


documents = st.one_of(
    mutated().map(as_text),
    trees.map(as_text),
    st.binary(max_size=200),
    st.text(max_size=200),
    st.just(""),
    st.integers(50, 5000).map(lambda n: "a: " + "[" * n + "]" * n + "\n"),
    st.integers(50, 2000).map(lambda n: "".join(f"{' ' * i}k{i}:\n" for i in range(n)) + "x: 1\n"),
    st.integers(10_000, 200_000).map(lambda n: "version: v1\nbig: " + "x" * n + "\n"),
    st.sampled_from(["a: &x 1\nb: *x\n", "!!python/object:os.system {}\n", "x: !!binary aGk=\n", "---\n---\n",
                     "version: v1\nstages: [b]\nj: {stage: b, target: linux, script: ['\\u0000\\n']}\n",
                     "'a\\nb': 1\n", "? [a]\n: 1\n", "\ufeffversion: v1\n", "x: 1e99999\ny: 0x_\n",
                     "n: " + "9" * 5000 + "\n"]),
)


@contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def assert_clean(args: list[str], code: int, stderr: str, stdout: str) -> None:
    assert code in (0, 1), (args, code, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    lines = stderr.splitlines()
    if code == 0:
        return
    if args[0] == "compile":
        assert stdout == ""
        assert lines, "an invalid workflow says why"
        for line in lines:
            assert ERROR_LINE.match(line), line
    else:
        assert lines[-1] == "loom check failed (exit code 1)"
        assert lines[-2].startswith("receipt: .loom/.runtime/receipts/")
        assert lines[-3] == ""
        errors = lines[:-3]
        assert errors
        for line in errors:
            assert ERROR_LINE.match(line), line


def write(repo: Path, data: str | bytes) -> Path:
    wf = repo / ".loom" / "workflow.yml"
    wf.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        wf.write_bytes(data)
    else:
        wf.write_text(data, encoding="utf-8", errors="surrogatepass")
    return wf


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=documents)
def test_compile_never_tracebacks(tmp_path: Path, data: str | bytes) -> None:
    try:
        wf = write(tmp_path, data)
    except UnicodeEncodeError:
        return  # lone surrogates cannot be a file's text
    result = CliRunner().invoke(cli, ["compile", "--workflow", str(wf)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert_clean(["compile"], result.exit_code, result.stderr, result.stdout)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=documents)
def test_check_never_tracebacks(tmp_path: Path, data: str | bytes) -> None:
    try:
        write(tmp_path, data)
    except UnicodeEncodeError:
        return
    with chdir(tmp_path):
        result = CliRunner().invoke(cli, ["check"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert_clean(["check"], result.exit_code, result.stderr, result.stdout)


def test_hostile_inputs_through_real_processes(tmp_path: Path) -> None:
    samples: list[str | bytes] = [b"\x89PNG\r\n\x1a\n\x00\x00", "a: " + "[" * 100_000 + "\n",
                                  "k: " + "x" * 3_000_000 + "\n", "a: &a [*a]\n", "- - - -\n", ""]
    for i, data in enumerate(samples):
        repo = tmp_path / f"r{i}"
        write(repo, data)
        for args in (["check"], ["compile"]):
            out = subprocess.run([sys.executable, "-m", "loomrun", *args], cwd=repo, capture_output=True,
                                 text=True, timeout=60, check=False)
            assert_clean(args, out.returncode, out.stderr, out.stdout)
            assert out.returncode == 1
