"""Inheritance (spec §2.4), variables (§2.5), rules (§2.6), Graph IR dependencies. Pure: no processes."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from loomrun.errors import LoomError
from loomrun.workflow import WorkflowInvalid
from loomrun.workflow.durations import parse_duration, parse_memory
from loomrun.workflow.graph import dependencies, graph_ir, select_jobs
from loomrun.workflow.model import CacheSpec, Image, ImageBuild, KeyPrefix, Limits
from loomrun.workflow.resolve import load_workflow
from loomrun.workflow.rules import RuleSyntaxError, evaluate, pipeline_runs, rule_context, skip_reason
from loomrun.workflow.variables import resolve


def wf_from(tmp_path: Path, text: str, files: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    (tmp_path / ".loom").mkdir(exist_ok=True)
    path = tmp_path / ".loom" / "workflow.yml"
    path.write_text(text)
    for rel, content in (files or {}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    return load_workflow(path, tmp_path)


INHERIT = """\
version: v1
stages: [a, b]
variables: {R: root, SHARED: from-root}
default:
  target: linux
  image: {name: base:1, build: {context: ., dockerfile: D1}}
  variables: {DV: default, SHARED: from-default}
  cache: {paths: [.d], policy: pull}
  limits: {memory: 1g, pids: 10}
  script: [default-step]
.one:
  variables: {ONE: "1", SHARED: from-one}
  image: {build: {dockerfile: D2}}
  script: [one-step]
  artifacts: {paths: [x, y], when: always}
.two:
  extends: .one
  variables: {TWO: "2"}
  needs: []
  limits: {cpus: "0.5"}
.three:
  variables: {THREE: "3", SHARED: from-three}
  cache: {key: k3}
job:
  extends: [.two, .three]
  stage: a
  variables: {OWN: "$R-${ONE}-$$-$MISSING", SHARED: own}
  artifacts: {paths: [z]}
off:
  stage: b
  extends: .three
  cache: null
empty:
  stage: b
  cache: []
plain:
  stage: b
"""


def test_extends_chain_under_job_keys(tmp_path: Path) -> None:
    wf = wf_from(tmp_path, INHERIT)
    job = wf.job("job")
    assert job.script == ("one-step",)  # lists replace: default's script replaced by .one's
    assert job.image == Image("base:1", ImageBuild(context=".", dockerfile="D2"))  # image.build merges
    assert job.limits == Limits(memory_bytes=1024**3, cpus=0.5, pids=10)
    assert job.caches == (CacheSpec(name=None, paths=(".d",), key="k3", policy="pull"),)
    assert job.artifacts is not None and job.artifacts.paths == ("z",) and job.artifacts.when == "always"
    assert job.needs == ()
    names = [k for k, _ in job.variables]
    assert names == ["R", "SHARED", "DV", "ONE", "TWO", "THREE", "OWN"]  # a later value keeps its place
    assert dict(job.variables)["SHARED"] == "own"


def test_loading_leaves_no_reference_cycle_so_the_parsed_tree_goes_at_once(tmp_path: Path) -> None:
    """The parsed tree (~2 MB for 1,000 jobs) must go when `load_workflow` returns, not when the
    collector next runs: a closure that called itself (extends chains) held it in a cycle until the
    middle of the run's first jobs, and the supervisor's peak memory grew by as much."""
    from loomrun.workflow.load import YNode

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        wf = wf_from(tmp_path, INHERIT)
        found = gc.collect()
        garbage = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert [j.name for j in wf.jobs] == ["job", "off", "empty", "plain"]
    assert found == 0, f"reference cycles left by load_workflow: {sorted(set(garbage))}"
    assert not any(isinstance(o, YNode) for o in gc.get_objects())


def test_cache_null_and_empty_list_turn_inherited_cache_off(tmp_path: Path) -> None:
    wf = wf_from(tmp_path, INHERIT)
    assert wf.job("off").caches == ()
    assert wf.job("empty").caches == ()
    assert wf.job("plain").caches == (CacheSpec(name=None, paths=(".d",), policy="pull"),)
    assert wf.job("plain").needs is None


def test_variables_expand(tmp_path: Path) -> None:
    job = wf_from(tmp_path, INHERIT).job("job")
    env, errors = resolve(job.variables, {"CI": "true"})
    assert env["OWN"] == "root-1-$-$MISSING" and not errors
    assert resolve([("CI_PROJECT_DIR", "/custom")], {"CI_PROJECT_DIR": "/ws"})[0]["CI_PROJECT_DIR"] == "/custom"


def test_variables_expand_whatever_their_order() -> None:
    pairs = [("B", "$A-b"), ("A", "${C}a"), ("C", "c $$X $UNK"), ("PATH", "$PATH:/x"), ("D", "$$$$")]
    values, errors = resolve(pairs, {"PATH": "/bin"})
    assert values == {"C": "c $X $UNK", "A": "c $X $UNKa", "B": "c $X $UNKa-b", "PATH": "/bin:/x", "D": "$$"}
    assert errors == {}


def test_variable_cycles_and_bombs_are_reported_once_each() -> None:
    values, errors = resolve([("A", "$B"), ("B", "$C"), ("C", "$A"), ("D", "x$A"), ("E", "ok")], {})
    assert values == {"E": "ok"} and errors == {"A": "variable cycle: A -> B -> C -> A"}
    bomb = [("V0", "0123456789")] + [(f"V{i}", f"$V{i - 1}$V{i - 1}") for i in range(1, 41)]
    values, errors = resolve(bomb, {})
    # V14 is 10 * 2^14 bytes: past the 128 KiB the kernel lets one environment variable hold
    assert errors == {"V14": 'variable "V14" expands to more than 128 KiB, the most one environment variable '
                      "may hold (the kernel's MAX_ARG_STRLEN)"}
    assert max(len(v) for v in values.values()) == 10 * 2**13 and "V40" not in values
    name = "N" * 10  # the bound counts "NAME=value" and its NUL, in bytes
    assert resolve([(name, "x" * (131072 - 12))], {})[1] == {}
    assert list(resolve([(name, "x" * (131072 - 11))], {})[1]) == [name]
    assert list(resolve([(name, "é" * 65531)], {})[1]) == [name]  # 131062 bytes from 65531 characters
    chain = [(f"V{i}", f"$V{i + 1}") for i in range(5000)] + [("V5000", "end")]
    assert resolve(chain, {})[0]["V0"] == "end"  # no recursion limit


def test_templates_from_include_and_provider(tmp_path: Path) -> None:
    text = ("version: v1\nstages: [s]\ninclude:\n  - local: .loom/templates/t.yaml\n"
            "j:\n  extends: .t\n  stage: s\n  script: [x]\n")
    wf = wf_from(tmp_path, text, {".loom/templates/t.yaml": ".t:\n  target: linux\n  image: alpine\n"})
    assert wf.job("j").provider == "docker"
    assert [j.name for j in wf.jobs] == ["j"]


def test_invalid_raises_with_all_diagnostics(tmp_path: Path) -> None:
    with pytest.raises(WorkflowInvalid) as info:
        wf_from(tmp_path, "version: v1\nstages: [s]\na:\n  stage: s\nb:\n  stage: s\n")
    assert [d.message for d in info.value.diagnostics] == [
        f'missing required key "{k}" in job "{j}"' for j in ("a", "b") for k in ("target", "script")]
    assert info.value.message.startswith('invalid workflow: workflow.yml:3 missing required key "target"')


DEPS = """\
version: v1
stages: [one, two, three]
default: {target: linux, script: [x]}
a: {stage: one}
b: {stage: one}
c: {stage: two}
d: {stage: three, needs: [a]}
e: {stage: three}
f: {stage: two, needs: [c]}
"""


def test_dependencies_and_selection(tmp_path: Path) -> None:
    wf = wf_from(tmp_path, DEPS)
    deps = dependencies(wf)
    assert deps["a"] == () and deps["c"] == ("a", "b")
    assert deps["d"] == ("a",) and deps["e"] == ("a", "b", "c", "f") and deps["f"] == ("c",)
    assert select_jobs(wf, ["d"]) == ["a", "d"]
    assert select_jobs(wf, ["f", "d"]) == ["a", "b", "c", "d", "f"]
    with pytest.raises(LoomError, match='unknown job "zz"'):
        select_jobs(wf, ["zz"])
    ir = graph_ir(wf)
    assert ir["edges"] == [{"from": "a", "to": "d"}, {"from": "c", "to": "f"}]
    assert list(ir["nodes"][0]) == ["id", "stage", "target", "script"]


@pytest.mark.parametrize(("expr", "env", "expected"), [
    ("$A", {"A": "x"}, True), ("$A", {"A": ""}, False), ("$A", {}, False),
    ('$A == "x"', {"A": "x"}, True), ("$A == 'x'", {"A": "y"}, False), ("$A == null", {}, True),
    ('$A != "x"', {}, True), ("$A =~ /^rel-\\d+$/", {"A": "rel-12"}, True), ("$A =~ /REL/i", {"A": "rel"}, True),
    ("$A !~ /x/", {"A": "y"}, True), ("$A =~ /x/", {}, False), ("${A} && $B", {"A": "1", "B": "1"}, True),
    ("$A && $B || $C", {"C": "1"}, True), ("$A && ($B || $C)", {"C": "1"}, False), ("!$A", {}, True),
    ("!($A || $B)", {"B": "1"}, False), ('$A == $B', {"A": "q", "B": "q"}, True),
    ('"a\\"b" == $A', {"A": 'a"b'}, True),
])
def test_if_expressions(expr: str, env: dict[str, str], expected: bool) -> None:
    assert evaluate(expr, env) is expected


@pytest.mark.parametrize("expr", ["", "$A ==", "$A = 'x'", "($A", "$A =~ x", "$A =~ /x/q", "&& $A", "$A $B",
                                  "x", "!" * 80 + "$A"])
def test_if_syntax_errors(expr: str) -> None:
    with pytest.raises(RuleSyntaxError):
        evaluate(expr, {})


def test_pipeline_runs(tmp_path: Path) -> None:
    text = ("version: v1\nstages: [s]\nvariables: {MODE: release, ECHO: '$HOME_DIR'}\nworkflow:\n  rules:\n"
            "    - if: '$SKIP'\n      when: never\n    - if: '$MODE == \"release\" && $ECHO == \"/h\"'\n"
            "j: {stage: s, target: linux, script: [x]}\n")
    wf = wf_from(tmp_path, text)

    def runs(env: dict[str, str], predefined: dict[str, str] | None = None) -> bool:
        return pipeline_runs(wf, rule_context(wf, predefined or {}, env))

    assert runs({"HOME_DIR": "/h"}) is True
    assert runs({"HOME_DIR": "/h", "SKIP": "1"}) is False
    assert runs({"HOME_DIR": "/other"}) is False  # no rule matched
    assert runs({"HOME_DIR": "/h", "MODE": "debug"}) is False  # the environment wins over root variables
    assert runs({}, {"HOME_DIR": "/h"}) is True  # predefined variables are seen, underneath the rest
    assert runs({"HOME_DIR": "/h"}, {"HOME_DIR": "/other"}) is True
    assert skip_reason(wf, rule_context(wf, {}, {"SKIP": "1"})) == "rule 1 matched with when: never"
    assert skip_reason(wf, rule_context(wf, {}, {})) == "no rule matched"


def test_durations_and_memory() -> None:
    assert parse_duration("1h 30m") == 5400 and parse_duration("90s") == 90 and parse_duration(600) == 600
    assert parse_duration("1.5h") == 5400 and parse_duration("2m30s") == 150
    assert parse_memory("2g") == 2 * 1024**3 and parse_memory("512m") == 512 * 1024**2
    assert parse_memory("100k") == 102400 and parse_memory(4096) == 4096 and parse_memory("1GiB") == 1024**3
    for bad in ("", "soon", "1h x", "-5s", True, 0, 1.5):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for bad_mem in ("", "2x", "-1m", False, 0):
        with pytest.raises(ValueError):
            parse_memory(bad_mem)


def test_cache_key_forms(tmp_path: Path) -> None:
    text = ("version: v1\nstages: [s]\ndefault: {target: linux, script: [x]}\n"
            "j:\n  stage: s\n  cache: {paths: [a], key: {prefix: p}}\n")
    assert wf_from(tmp_path, text).job("j").caches[0].key == KeyPrefix("p")
