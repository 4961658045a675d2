"""`loom secrets ...` (spec §7.4) as real processes on real databases (and the fake 1Password
account): create, add items, rotate the master password, then a real `loom run` that reads them.
Values come only from variables and are never printed; every command speaks `--json`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import git, init_repo
from tests.process.runner import loom_env
from tests.secrets.conftest import assert_nowhere, read_account

LOOM = [sys.executable, "-m", "loomrun"]
ALIAS = "group/project/repo"
SECRET_VALUES = {"V1": "first-Value-0a1", "V2": "second-Value-0b2", "V3": "third-Value-0c3",
                 "KP1": "master-One-771", "KP2": "master-Two-882"}


class Loom:
    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.repo = repo
        self.env = env
        self.printed: list[str] = []

    def __call__(self, *args: str, code: int = 0, **extra: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*LOOM, *args], cwd=self.repo, env={**self.env, **extra}, capture_output=True,
                             text=True, timeout=120, check=False)
        self.printed += [out.stdout, out.stderr]
        assert "Traceback" not in out.stderr, out.stderr
        assert out.returncode == code, (args, out.stdout, out.stderr)
        return out


@pytest.fixture
def loom(tmp_path: Path) -> Loom:
    repo = init_repo(tmp_path / "repo", {".loom/workflow.yml": "version: v1\nstages: [ci]\n"
                                         "j:\n  stage: ci\n  target: linux\n  script: [\"true\"]\n"})
    git(repo, "remote", "add", "origin", "git@gitlab.example.com:group/project/repo.git")
    home = tmp_path / "home"
    home.mkdir()
    return Loom(repo, loom_env(HOME=str(home), **SECRET_VALUES))


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_keepass_create_add_rotate_then_run(loom: Loom) -> None:
    (loom.repo / ".loom" / "config.yml").write_text("# kept as written\nruntime:\n  docker:\n"
                                                    "    workspaceMount: bind_mount  # mine\n")
    created = loom("secrets", "keepass", "vault", "create", "--password-from-env", "KP1")
    assert created.stdout == "vault created: alias=group/project/repo path=.loom/keepass/GROUP_PROJECT_REPO.kdbx\n"
    database = loom.repo / ".loom/keepass/GROUP_PROJECT_REPO.kdbx"
    assert database.stat().st_mode & 0o777 == 0o600
    config = (loom.repo / ".loom" / "config.yml").read_text()
    assert config.startswith("# kept as written\nruntime:\n  docker:\n    workspaceMount: bind_mount  # mine\n")
    assert '"group/project/repo": {path: "keepass/GROUP_PROJECT_REPO.kdbx", passwordEnv: "KP1"}' in config
    again = loom("secrets", "keepass", "vault", "create", "--password-from-env", "KP1", code=1)
    assert "already exists; --force replaces it" in again.stderr
    assert (loom.repo / ".loom" / "config.yml").read_text() == config  # one entry, not two

    for field, var in (("password", "V1"), ("token", "V2")):
        out = loom("secrets", "keepass", "item", "create", ALIAS, "--item-path", "services/loom/deploy",
                   "--field", field, "--value-from-env", var)
        assert out.stdout == f"item field created: alias={ALIAS} item=services/loom/deploy field={field}\n"
    loom("secrets", "keepass", "item", "create", ALIAS, "--item-path", "services/loom/deploy", "--field", "token",
         "--value-from-env", "V3", code=1)
    updated = loom("secrets", "keepass", "item", "update", ALIAS, "--item-path", "loom/deploy", "--field", "token",
                   "--value-from-env", "V3")
    assert updated.stdout == f"item field updated: alias={ALIAS} item=loom/deploy field=token\n"
    assert loom("secrets", "keepass", "item", "list", ALIAS).stdout == "services/loom/deploy  password,token\n"
    assert json.loads(loom("secrets", "keepass", "item", "list", ALIAS, "--json").stdout) == [
        {"item": "services/loom/deploy", "fields": ["password", "token"]}]
    listed = loom("secrets", "keepass", "vault", "list")
    assert listed.stdout == f"alias={ALIAS} path=.loom/keepass/GROUP_PROJECT_REPO.kdbx credentials=password\n"

    rotated = loom("secrets", "keepass", "vault", "update", ALIAS, "--password-from-env", "KP2")
    assert rotated.stdout == f"vault updated: alias={ALIAS} path=.loom/keepass/GROUP_PROJECT_REPO.kdbx\n"
    refused = loom("secrets", "keepass", "item", "list", ALIAS, code=1)  # KP1 no longer opens it
    assert "SECRETS_PROVIDER_UNAVAILABLE" in refused.stderr and "wrong credentials" in refused.stderr

    (loom.repo / ".loom" / "workflow.yml").write_text(f"""version: v1
stages: [ci]
deploy:
  stage: ci
  target: linux
  secrets:
    PW: {{ref: "keepass://{ALIAS}#services/loom/deploy:password"}}
    TOKEN: {{ref: "keepass://{ALIAS}#services/loom/deploy:token", file: false}}
  script:
    - '[ "$(sha256sum < "$PW" | cut -c1-64)" = "{sha(SECRET_VALUES["V1"])}" ] && echo pw-ok'
    - '[ "$(printf %s "$TOKEN" | sha256sum | cut -c1-64)" = "{sha(SECRET_VALUES["V3"])}" ] && echo token-ok'
""")
    run = loom("run", "--local", "--stream", KP1=SECRET_VALUES["KP2"])  # the variable now holds the new password
    assert "[deploy] pw-ok" in run.stderr and "[deploy] token-ok" in run.stderr
    for value in SECRET_VALUES.values():
        assert_nowhere(value, loom.repo / ".loom" / ".runtime", *loom.printed, skip=())


def test_keepass_commands_json_keyfile_and_errors(loom: Loom, tmp_path: Path) -> None:
    key = tmp_path / "vault.key"
    key.write_bytes(os.urandom(64))
    loom.env["KF"] = str(key)
    created = loom("secrets", "keepass", "vault", "create", "--vault-path", "local/main", "--database-path",
                   str(tmp_path / "local.kdbx"), "--keyfile-from-env", "KF", "--json")
    assert json.loads(created.stdout) == {"alias": "local/main", "path": str(tmp_path / "local.kdbx"),
                                          "config_updated": True}
    doc = json.loads(loom("secrets", "keepass", "item", "create", "local/main", "--item-path", "a/b", "--field",
                          "api key", "--value-from-env", "V1", "--json").stdout)
    assert doc == {"alias": "local/main", "item": "a/b", "field": "api key", "created": True}
    assert json.loads(loom("secrets", "keepass", "vault", "list", "--json").stdout) == [
        {"alias": "local/main", "path": str(tmp_path / "local.kdbx"), "credentials": ["keyfile"]}]
    missing = loom("secrets", "keepass", "item", "create", "local/main", "--item-path", "a/b", "--field", "x",
                   "--value-from-env", "NOT_SET_ANYWHERE", code=1)
    assert missing.stderr.strip().endswith("--value-from-env NOT_SET_ANYWHERE: $NOT_SET_ANYWHERE is not set")
    none = loom("secrets", "keepass", "vault", "create", "--vault-path", "x", code=2)
    assert "give --password-from-env VAR and/or --keyfile-from-env VAR" in none.stderr
    unknown = loom("secrets", "keepass", "item", "list", "nope/alias", code=1)
    assert "SECRETS_PROVIDER_UNAVAILABLE" in unknown.stderr and "LOOM_KEEPASS_DB_NOPE_ALIAS_PATH" in unknown.stderr
    assert SECRET_VALUES["V1"] not in "".join(loom.printed)


BAD_CONFIGS = {  # (text, the error after "<file>: ")
    "unknown-key": ("runtime:\n  jobserver: on\ncolour: red\n", 'unknown key "colour"'),
    "unknown-alias-field": ("providers:\n  keepass:\n    aliases:\n      group/project/repo: {path: v.kdbx, "
                            "passwordEnv: KP1, pasword: x}\n",
                            'unknown key "providers.keepass.aliases.group/project/repo.pasword"'),
    "bad-type": ("providers: [keepass]\n", 'expected a mapping for "providers"'),
    "bad-value": ("runtime:\n  jobserver: sometimes\n", None),
    "broken-yaml": ("providers: {keepass: [\n", None),
}
SECRETS_COMMANDS = (("keepass", "vault", "list"), ("keepass", "item", "list", ALIAS),
                    ("keepass", "vault", "create", "--password-from-env", "KP1"),
                    ("keepass", "vault", "update", ALIAS, "--password-from-env", "KP2"),
                    ("keepass", "item", "create", ALIAS, "--item-path", "a", "--field", "f", "--value-from-env", "V1"),
                    ("op", "vault", "list"), ("op", "item", "list", "--vault", "Engineering", "--json"),
                    ("op", "item", "create", "--vault", "Engineering", "--item-path", "a", "--field", "f",
                     "--value-from-env", "V1"))


@pytest.mark.parametrize("layer", ["repo", "user"])
@pytest.mark.parametrize("bad", sorted(BAD_CONFIGS))
def test_every_secrets_command_refuses_a_bad_merged_config_in_one_line(loom: Loom, fake_op: Path, layer: str,
                                                                       bad: str) -> None:
    """Spec §8: unknown keys (and bad values) are errors in every command that reads the config, the
    secrets commands too, from either layer: one `SECRETS_PROVIDER_UNAVAILABLE` line (spec §7.2,
    "misconfigured"), exit 1, and nothing written (no database, the config file as it was)."""
    loom.env.update(OP_SERVICE_ACCOUNT_TOKEN="ops_fake_token_1234", LOOM_OP_FAKE=str(fake_op))
    text, error = BAD_CONFIGS[bad]
    config = (Path(loom.env["HOME"]) / ".config" / "loom" if layer == "user" else loom.repo / ".loom") / "config.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    account = fake_op.read_text()
    for command in SECRETS_COMMANDS:
        out = loom("secrets", *command, code=1)
        assert out.stdout == ""
        [line] = out.stderr.splitlines()
        words = " ".join(part for part in command if part[0] != "-" and part not in (ALIAS, "Engineering", "a", "f",
                                                                                       "KP1", "KP2", "V1"))
        assert line.startswith(f"loom secrets {words}: SECRETS_PROVIDER_UNAVAILABLE: runtime config: {config}"), line
        if error is not None:
            assert line.endswith(f"{config}: {error}"), line
    assert config.read_text() == text
    assert not (loom.repo / ".loom" / "keepass").exists()
    assert fake_op.read_text() == account


def test_origin_alias_forms(loom: Loom) -> None:
    from loomrun.commands.secrets import origin_alias

    for url, alias in (("https://gitlab.example.com/group/project/repo.git", "group/project/repo"),
                       ("ssh://git@host:2222/team/app.git", "team/app"),
                       ("git@github.com:org/tool", "org/tool")):
        git(loom.repo, "remote", "set-url", "origin", url)
        assert origin_alias(loom.repo) == alias
    git(loom.repo, "remote", "remove", "origin")
    out = loom("secrets", "keepass", "vault", "create", "--password-from-env", "KP1", code=1)
    assert "has no git origin to take the alias from; give --vault-path ALIAS" in out.stderr


def test_op_commands_against_the_fake_account(loom: Loom, fake_op: Path) -> None:
    loom.env.update(OP_SERVICE_ACCOUNT_TOKEN="ops_fake_token_1234", LOOM_OP_FAKE=str(fake_op))
    assert loom("secrets", "op", "vault", "list").stdout == "name=Engineering id=vlt_eng1\nname=Platform id=vlt_plat2\n"
    created = loom("secrets", "op", "item", "create", "--vault", "Engineering", "--item-path", "services/loom/api",
                   "--field", "token", "--value-from-env", "V2")
    assert created.stdout == "item field created: vault=Engineering item=services/loom/api field=token\n"
    listed = loom("secrets", "op", "item", "list", "--vault", "Engineering")
    assert listed.stdout.splitlines() == ["services/loom/api  token", "services/loom/deploy  token,password",
                                          "twin", "twin"]
    assert json.loads(loom("secrets", "op", "vault", "list", "--json").stdout)[0] == {"name": "Engineering",
                                                                                      "id": "vlt_eng1"}
    [item] = [i for i in read_account(fake_op)["vaults"][0]["items"] if i["title"] == "services/loom/api"]
    assert item["fields"][0]["value"] == SECRET_VALUES["V2"]
    nope = loom("secrets", "op", "item", "list", "--vault", "Nope", code=1)
    assert nope.stderr.strip().endswith('SECRETS_REF_NOT_FOUND: 1Password: no vault "Nope" (vaults this token '
                                        "sees: Engineering, Platform)")
    no_token = loom("secrets", "op", "vault", "list", code=1, OP_SERVICE_ACCOUNT_TOKEN="")
    assert "the service-account token is read from $OP_SERVICE_ACCOUNT_TOKEN, which is not set" in no_token.stderr
    printed = "".join(loom.printed)
    assert SECRET_VALUES["V2"] not in printed and "ops_fake_token_1234" not in printed


# Values typed where a variable's NAME belongs: a lower-case word (a valid name by POSIX), a value with
# punctuation (not a name at all), and one that starts with a digit.
MISTAKEN_VALUES = ("hunter2", "Tr0ub4dor&3 x/y", "9lives-Secret")


def _from_env_commands(alias: str) -> list[tuple[str, ...]]:
    """Every `loom secrets` command line that takes a value or a credential, with `{}` where the
    variable's name goes."""
    item = ("--item-path", "a/b", "--field", "f", "--value-from-env", "{}")
    return [("keepass", "vault", "create", "--vault-path", "mistake/one", "--password-from-env", "{}"),
            ("keepass", "vault", "create", "--vault-path", "mistake/one", "--keyfile-from-env", "{}"),
            ("keepass", "vault", "create", "--vault-path", "mistake/one", "--password-from-env", "KP1",
             "--keyfile-from-env", "{}"),
            ("keepass", "vault", "update", alias, "--password-from-env", "{}"),
            ("keepass", "vault", "update", alias, "--keyfile-from-env", "{}"),
            ("keepass", "item", "create", alias, *item),
            ("keepass", "item", "update", alias, *item),
            ("op", "item", "create", "--vault", "Engineering", *item)]


def test_a_value_given_as_a_flags_argument_is_never_taken_or_echoed(loom: Loom, fake_op: Path) -> None:
    loom.env.update(OP_SERVICE_ACCOUNT_TOKEN="ops_fake_token_1234", LOOM_OP_FAKE=str(fake_op))
    loom("secrets", "keepass", "vault", "create", "--vault-path", ALIAS, "--password-from-env", "KP1")
    database = loom.repo / ".loom/keepass/GROUP_PROJECT_REPO.kdbx"
    before = (database.read_bytes(), (loom.repo / ".loom/config.yml").read_text(), fake_op.read_text())
    for line in _from_env_commands(ALIAS):
        for value in MISTAKEN_VALUES:
            args = [value if a == "{}" else a for a in line]
            out = loom("secrets", *args, code=1)
            flag = args[args.index(value) - 1]
            assert value not in out.stdout + out.stderr, args
            assert out.stderr.startswith(f"loom secrets {' '.join(line[:3])}: {flag}: the "), out.stderr
            assert "give the NAME of a variable that holds the value, never the value itself" in out.stderr
            if not value[0].isalpha():
                assert "the argument is not a variable name" in out.stderr
    # Nothing was made or changed from those values: no database, no alias, no item.
    assert (database.read_bytes(), (loom.repo / ".loom/config.yml").read_text(), fake_op.read_text()) == before
    assert not (loom.repo / ".loom/keepass/MISTAKE_ONE.kdbx").exists()
    assert loom("secrets", "keepass", "item", "list", ALIAS).stdout == ""
    # A conventional name is still named, so the person knows which variable to set.
    out = loom("secrets", "keepass", "item", "create", ALIAS, *("--item-path", "a/b", "--field", "f"),
               "--value-from-env", "UNSET_VAR_9", code=1)
    assert out.stderr.strip().endswith("--value-from-env UNSET_VAR_9: $UNSET_VAR_9 is not set")
    assert_nowhere("hunter2", loom.repo / ".loom", *loom.printed, skip=())


def test_no_command_has_a_flag_that_takes_a_value_itself() -> None:
    """Every option of every `loom secrets` command is a switch, a name/path that is not secret, or
    a `--*-from-env VAR`: a new `--value`/`--password`/`--token` flag fails here."""
    import click

    from loomrun.commands.secrets_cli import group

    not_secret = {"--vault-path", "--database-path", "--item-path", "--field", "--vault"}
    seen: list[str] = []

    def walk(cmd: click.Command, path: str) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}")
            return
        seen.append(path)
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.is_flag:
                [opt] = param.opts
                assert opt in not_secret or opt.endswith("-from-env"), (path, opt)
            elif isinstance(param, click.Argument):
                assert param.name == "alias", (path, param.name)

    walk(group, "secrets")
    assert len(seen) == 9, seen


def test_keepass_password_and_keyfile_force_a_configured_alias_and_json(loom: Loom, tmp_path: Path) -> None:
    """An alias already in .loom/config.yml keeps its path and gets no second entry; a database with
    both a password and a keyfile; `--force` replaces it; rotation of both; `--json` everywhere."""
    keys = []
    for name in ("one.key", "two.key"):
        keys.append(tmp_path / name)
        keys[-1].write_bytes(os.urandom(64))
    loom.env.update(KF=str(keys[0]))
    config = loom.repo / ".loom" / "config.yml"
    config.write_text(f'providers:\n  keepass:\n    aliases:\n      "{ALIAS}": {{path: vaults/team.kdbx, '
                      "passwordEnv: KP1, keyfileEnv: KF}\n")
    declared = config.read_text()
    create = ("secrets", "keepass", "vault", "create", "--vault-path", ALIAS, "--password-from-env", "KP1",
              "--keyfile-from-env", "KF", "--json")
    doc = json.loads(loom(*create).stdout)
    assert doc == {"alias": ALIAS, "path": ".loom/vaults/team.kdbx", "config_updated": False}
    assert config.read_text() == declared  # no second entry
    assert loom("secrets", "keepass", "vault", "list").stdout == (
        f"alias={ALIAS} path=.loom/vaults/team.kdbx credentials=password,keyfile\n")

    item = (ALIAS, "--item-path", "ci/deploy", "--field", "token")
    loom("secrets", "keepass", "item", "create", *item, "--value-from-env", "V1")
    assert json.loads(loom("secrets", "keepass", "item", "update", *item, "--value-from-env", "V2",
                           "--json").stdout) == {"alias": ALIAS, "item": "ci/deploy", "field": "token", "updated": True}
    without_key = loom("secrets", "keepass", "item", "list", ALIAS, code=1, KF="")
    assert "its keyfile path is read from $KF, which is not set" in without_key.stderr

    loom(*create, code=1)  # an existing database needs --force
    assert json.loads(loom(*create, "--force").stdout)["config_updated"] is False
    assert json.loads(loom("secrets", "keepass", "item", "list", ALIAS, "--json").stdout) == []  # a new, empty one
    assert config.read_text() == declared
    loom("secrets", "keepass", "item", "create", *item, "--value-from-env", "V3")

    rotated = loom("secrets", "keepass", "vault", "update", ALIAS, "--password-from-env", "KP2",
                   "--keyfile-from-env", "KF2", "--json", KF2=str(keys[1]))
    assert json.loads(rotated.stdout) == {"alias": ALIAS, "path": ".loom/vaults/team.kdbx",
                                          "credentials": ["password", "keyfile"]}
    old = loom("secrets", "keepass", "item", "list", ALIAS, code=1)
    assert "wrong credentials" in old.stderr and "the master password and keyfile given" in old.stderr
    new_key_only = loom("secrets", "keepass", "item", "list", ALIAS, code=1, KF=str(keys[1]))
    assert "wrong credentials" in new_key_only.stderr  # the old password with the new keyfile
    assert loom("secrets", "keepass", "item", "list", ALIAS, KP1=SECRET_VALUES["KP2"],
                KF=str(keys[1])).stdout == "ci/deploy  token\n"
    for value in SECRET_VALUES.values():
        assert_nowhere(value, loom.repo / ".loom", *loom.printed, skip=())


def test_op_item_create_and_list_speak_json(loom: Loom, fake_op: Path) -> None:
    loom.env.update(OP_SERVICE_ACCOUNT_TOKEN="ops_fake_token_1234", LOOM_OP_FAKE=str(fake_op))
    created = loom("secrets", "op", "item", "create", "--vault", "Platform", "--item-path", "infra/db/main",
                   "--field", "password", "--value-from-env", "V1", "--json")
    assert json.loads(created.stdout) == {"vault": "Platform", "item": "infra/db/main", "field": "password",
                                          "created": True}
    listed = loom("secrets", "op", "item", "list", "--vault", "Platform", "--json")
    assert json.loads(listed.stdout) == [{"item": "infra/db/main", "fields": ["password"]}]
    assert SECRET_VALUES["V1"] not in "".join(loom.printed)
