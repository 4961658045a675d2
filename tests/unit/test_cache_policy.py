"""Cache `policy` x `when` (spec §6.1)."""

from __future__ import annotations

import pytest

from loomrun.cache.policy import restores, saves
from loomrun.workflow.model import CacheSpec


@pytest.mark.parametrize(("policy", "restore"), [("pull", True), ("push", False), ("pull-push", True)])
def test_restore_follows_policy(policy: str, restore: bool) -> None:
    assert restores(CacheSpec(name=None, paths=("x",), policy=policy)) is restore


@pytest.mark.parametrize(
    ("policy", "when", "ok", "expected"),
    [
        ("pull-push", "on_success", True, True),
        ("pull-push", "on_success", False, False),
        ("pull-push", "on_failure", False, True),
        ("pull-push", "on_failure", True, False),
        ("push", "always", False, True),
        ("push", "always", True, True),
        ("pull", "always", True, False),
    ],
)
def test_save_follows_policy_and_when(policy: str, when: str, ok: bool, expected: bool) -> None:
    assert saves(CacheSpec(name=None, paths=("x",), policy=policy, when=when), ok) is expected


def test_a_disabled_cache_neither_restores_nor_saves() -> None:
    spec = CacheSpec(name="c", paths=(), disabled=True)
    assert not restores(spec) and not saves(spec, True)
