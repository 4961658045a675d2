"""The two YAML composers agree: libyaml's events composed in `load.py` (the fast path) and pyyaml's
checking composer give the same `YNode` tree, marks included, or the fast path steps aside."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from loomrun.workflow import load

pytestmark = pytest.mark.skipif(load._CLoader is None, reason="pyyaml built without libyaml")


@contextmanager
def checking_composer_only() -> Iterator[None]:
    saved = load._CLoader
    load._CLoader = None
    try:
        yield
    finally:
        load._CLoader = saved


def both(text: str) -> tuple[str, str]:
    fast = repr(load.parse_text(text, "w.yml"))
    with checking_composer_only():
        slow = repr(load.parse_text(text, "w.yml"))
    return fast, slow


PLAIN = [
    "version: v1\nstages: [build]\nbuild:\n  stage: build\n  target: linux\n  script: ['echo hi']\n",
    "a: 'q'\nb: \"x\"\nc: yes\nd: ~\ne: 1.5\nf: 2026-01-01\ng: 0x1F\nh: .inf\ni: |\n  two\n  lines\n",
    "- a\n- {b: [1, 2, {c: d}]}\n",
    "k: v\n...\n",
    # Entries in error: the value of a duplicate or non-string key is left out, its own errors too.
    "a: 1\na: {x: [1], x: 2}\nb: [c]\n",
    "? [a]\n: {b: 1, b: 2}\nc: d\n",
    "? {a: 1}\n: x\n1: one\n2026-01-01: day\nnull: n\n",
    "a: {b: 1, b: 2, c: {d: 1, d: 2}}\n",
]
ASIDE = [
    "a: &x 1\nb: *x\n", "a: !!str 1\n", "a: !x 1\n", "", "# nothing\n", "a: 1\n---\nb: 2\n",
    "a: [\n", "a: b: c\n", "a: " + "[" * 60 + "]" * 60 + "\n",
    # An empty value where libyaml and pyyaml mark it differently (the next token's start against
    # the previous token's end): a last `?` key, and any empty value in a flow collection.
    "?", "? a", "a: 1\n? b", "{a: }", "{a: , b: 1}", "{? }", "[a: ]",
]


@pytest.mark.parametrize("text", PLAIN)
def test_plain_documents_take_the_fast_path_and_match(text: str) -> None:
    assert load._compose_c(text) is not None
    fast, slow = both(text)
    assert fast == slow


@pytest.mark.parametrize("text", ASIDE)
def test_anything_else_goes_to_the_checking_composer(text: str) -> None:
    assert load._compose_c(text) is None
    fast, slow = both(text)
    assert fast == slow


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(tree=trees, flow=st.booleans(), cut=st.integers(min_value=0, max_value=400))
def test_random_documents_and_their_truncations_agree(tree: object, flow: bool, cut: int) -> None:
    text = yaml.safe_dump(tree, default_flow_style=flow, allow_unicode=True)
    for doc in (text, text[:cut]):
        fast, slow = both(doc)
        assert fast == slow
