"""Secret ref syntax (spec §7.1): one parser for `loom check` and the run, with a line number in check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loomrun.workflow.secret_refs import EnvRef, KeepassRef, OpRef, RefError, env_key, parse
from tests.process.runner import make_repo, run_loom


@pytest.mark.parametrize(("ref", "parsed"), [
    ("env://DEPLOY_TOKEN", EnvRef("DEPLOY_TOKEN")),
    ("keepass://local/main#services/loom/deploy:password",
     KeepassRef("local/main", "services/loom/deploy", "password")),
    ("keepass://team#a:b/title:with:colons:token", KeepassRef("team", "a:b/title:with:colons", "token")),
    ("keepass://group/project/repo#deploy:url", KeepassRef("group/project/repo", "deploy", "url")),
    ("op://Engineering/services/loom/deploy/token", OpRef("Engineering", "services/loom/deploy", "token")),
    ("op://vlt_1/item/password", OpRef("vlt_1", "item", "password")),
])
def test_valid_refs(ref: str, parsed: object) -> None:
    assert parse(ref) == parsed


@pytest.mark.parametrize(("ref", "says"), [
    ("DEPLOY_TOKEN", "a secret ref is <scheme>://"),
    ("vault://x", 'unknown secret scheme "vault"'),
    ("env://", "env:// needs a variable name"),
    ("env://A-B", "env:// needs a variable name"),
    ("keepass://local/main", 'keepass:// needs "#"'),
    ("keepass://local#services/deploy", 'keepass:// needs ":<field>"'),
    ("keepass://#deploy:password", "keepass:// alias is empty"),
    ("keepass://local#:password", "keepass:// entry path is empty"),
    ("keepass://local#deploy:", "keepass:// field is empty"),
    ("keepass://local#a//b:password", "empty segment"),
    ("op://Engineering/token", "op:// needs a vault, an item path and a field"),
    ("op://Engineering//token", "op:// needs a vault, an item path and a field"),
    ("op://Engineering/ item /token", "has blanks at its ends"),
])
def test_invalid_refs_say_what_is_wrong(ref: str, says: str) -> None:
    with pytest.raises(RefError) as exc:
        parse(ref)
    assert says in str(exc.value)


def test_alias_key() -> None:
    assert env_key("team/app") == "TEAM_APP"
    assert env_key("prod.eu") == "PROD_EU"
    assert env_key("local-main") == "LOCAL_MAIN"
    assert env_key("group/project/repo") == "GROUP_PROJECT_REPO"


def test_check_names_the_line_and_the_problem(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", """
    version: v1
    stages: [s]
    job:
      stage: s
      target: linux
      secrets:
        GOOD: {ref: "keepass://local/main#services/loom/deploy:password"}
        NO_HASH: {ref: "keepass://local/main/services/deploy:password"}
        NO_FIELD: {ref: "keepass://local/main#services/deploy"}
        SHORT_OP: {ref: "op://Engineering/token"}
      script: ["true"]
    """)
    result = run_loom(repo, "check")
    assert result.code != 0
    lines = [line for line in result.stderr.splitlines() if "invalid secret ref" in line]
    assert len(lines) == 3, result.stderr
    for line, (number, name, says) in zip(sorted(lines, key=_line_number), [
            (8, "NO_HASH", 'needs "#"'), (9, "NO_FIELD", 'needs ":<field>"'), (10, "SHORT_OP", "op:// needs a vault")],
            strict=True):
        assert _line_number(line) == number and name in line and says in line, line


def _line_number(line: str) -> int:
    match = re.search(r"workflow\.yml:(\d+)", line)
    assert match, line
    return int(match.group(1))
