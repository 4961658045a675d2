"""KeePass resolution on real .kdbx files (spec §7.1, §7.2): entry paths by suffix, fields, ambiguity,
credentials (password, keyfile, both), aliases from config and the LOOM_KEEPASS_DB_* overlays, and
every failure as its code with a line that says what to fix."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.secrets.conftest import PASSWORD, VALUES, make_vault
from workers.secrets import aliases
from workers.secrets.errors import PROVIDER_UNAVAILABLE, REF_INVALID, REF_NOT_FOUND, SecretError
from workers.secrets.keepass import Vault, open_vault


@pytest.fixture(scope="module")
def opened(vault_template: Path) -> Vault:
    return open_vault(str(vault_template), PASSWORD, None, "test")


@pytest.mark.parametrize(("path", "field", "value"), [
    ("services/loom/deploy", "password", VALUES["password"]),
    ("loom/deploy", "username", VALUES["username"]),
    ("deploy", "token", VALUES["token"]),
    ("Root/services/loom/deploy", "url", "https://db.example"),
])
def test_reads_by_suffix_any_field(opened: Vault, path: str, field: str, value: str) -> None:
    assert opened.read(path, field) == value


def test_two_matches_name_both(opened: Vault) -> None:
    with pytest.raises(SecretError) as exc:
        opened.read("twin", "password")
    assert exc.value.code == REF_INVALID
    assert '"services/loom/twin"' in exc.value.message and '"other/twin"' in exc.value.message
    assert opened.read("other/twin", "password") == "twin-b-pw"


def test_not_found_entry_and_field(opened: Vault) -> None:
    with pytest.raises(SecretError) as exc:
        opened.read("services/nothing", "password")
    assert exc.value.code == REF_NOT_FOUND and '"services/nothing"' in exc.value.message
    with pytest.raises(SecretError) as exc:
        opened.read("services/loom/deploy", "api_key")
    assert exc.value.code == REF_NOT_FOUND
    assert "its fields: username, password, url, token" in exc.value.message
    assert VALUES["password"] not in exc.value.message
    with pytest.raises(SecretError) as exc:
        opened.read("services/loom/deploy", "notes")  # a standard field that is empty
    assert exc.value.code == REF_NOT_FOUND
    with pytest.raises(SecretError) as exc:
        opened.read("eploy", "password")  # a suffix is made of whole segments
    assert exc.value.code == REF_NOT_FOUND


def test_recycle_bin_entries_never_match(tmp_path: Path) -> None:
    path = make_vault(tmp_path / "v.kdbx")
    vault = open_vault(str(path), PASSWORD, None, "test")
    vault.kp.trash_entry(vault.find("other/twin"))
    vault.save()
    again = open_vault(str(path), PASSWORD, None, "test")
    assert again.read("twin", "password") == "twin-a-pw"  # no longer ambiguous


def test_wrong_credentials_and_bad_files(vault_template: Path, tmp_path: Path) -> None:
    with pytest.raises(SecretError) as exc:
        open_vault(str(vault_template), "not the password", None, 'keepass alias "x"')
    assert exc.value.code == PROVIDER_UNAVAILABLE
    assert exc.value.message == (f'keepass alias "x": wrong credentials for {vault_template} (the master password '
                                 "given do not open it)")
    assert "not the password" not in exc.value.message
    junk = tmp_path / "junk.kdbx"
    junk.write_bytes(b"not a database")
    with pytest.raises(SecretError) as exc:
        open_vault(str(junk), "pw", None, "x")
    assert exc.value.code == PROVIDER_UNAVAILABLE and "is not a KeePass database" in exc.value.message


def test_keyfile_only_and_password_plus_keyfile(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    key.write_bytes(b"0123456789abcdef" * 4)
    only_key = make_vault(tmp_path / "key.kdbx", password=None, keyfile=str(key))
    assert open_vault(str(only_key), None, str(key), "x").read("deploy", "token") == VALUES["token"]
    both = make_vault(tmp_path / "both.kdbx", password="pw2", keyfile=str(key))
    assert open_vault(str(both), "pw2", str(key), "x").read("deploy", "token") == VALUES["token"]
    for password, keyfile in (("pw2", None), (None, str(key))):
        with pytest.raises(SecretError) as exc:
            open_vault(str(both), password, keyfile, "x")
        assert exc.value.code == PROVIDER_UNAVAILABLE and "wrong credentials" in exc.value.message


def test_item_create_update_and_list(tmp_path: Path) -> None:
    path = make_vault(tmp_path / "new.kdbx", password="pw")
    vault = open_vault(str(path), "pw", None, "x")
    for entry in vault.entries():
        vault.kp.delete_entry(entry)
    vault.set_field("ci/app/deploy", "token", "t1", create=True)
    vault.set_field("ci/app/deploy", "password", "p1", create=True)
    vault.save()
    with pytest.raises(SecretError) as exc:
        vault.set_field("ci/app/deploy", "token", "t2", create=True)
    assert exc.value.code == REF_INVALID and "use `item update`" in exc.value.message
    with pytest.raises(SecretError) as exc:
        vault.set_field("app/deploy", "api_key", "x", create=False)
    assert exc.value.code == REF_NOT_FOUND and "use `item create`" in exc.value.message
    vault.set_field("app/deploy", "token", "t2", create=False)  # update: by suffix, like a ref
    vault.save()
    again = open_vault(str(tmp_path / "new.kdbx"), "pw", None, "x")
    assert again.read("ci/app/deploy", "token") == "t2"
    assert again.items() == [("ci/app/deploy", ["password", "token"])]
    assert (tmp_path / "new.kdbx").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.kdbx"]  # no temp file left


# -- aliases ---------------------------------------------------------------------------------------

def conf(path: str | None, password_env: str | None = "KP_PW", keyfile_env: str | None = None) -> object:
    return SimpleNamespace(name="team/app", path=path, password_env=password_env, keyfile_env=keyfile_env)


def test_alias_from_config_overlaid_field_by_field(tmp_path: Path) -> None:
    configured = {"team/app": conf("/cfg/app.kdbx")}
    src = aliases.source("team/app", configured, {"providers.keepass.aliases.team/app": "/r/.loom/config.yml"},
                         {}, str(tmp_path))
    assert src == aliases.VaultSource("team/app", "/cfg/app.kdbx", "KP_PW", None, "/r/.loom/config.yml")
    env = {"LOOM_KEEPASS_DB_TEAM_APP_PATH": "rel/app.kdbx", "LOOM_KEEPASS_DB_TEAM_APP_KEYFILE_ENV": "KP_KEY"}
    src = aliases.source("team/app", configured, {}, env, str(tmp_path))
    assert src.path == str(tmp_path / "rel/app.kdbx")  # a relative path from a variable: from loom's folder
    assert (src.password_env, src.keyfile_env) == ("KP_PW", "KP_KEY")  # config's passwordEnv kept
    assert src.origin == "LOOM_KEEPASS_DB_TEAM_APP_PATH"
    only_env = aliases.source("prod.eu", {}, {}, {"LOOM_KEEPASS_DB_PROD_EU_PATH": "/v.kdbx",
                                                 "LOOM_KEEPASS_DB_PROD_EU_PASSWORD_ENV": "P"}, "/")
    assert (only_env.path, only_env.password_env) == ("/v.kdbx", "P")


def test_alias_errors_say_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(SecretError) as exc:
        aliases.source("team/app", {}, {}, {}, "/")
    assert exc.value.code == PROVIDER_UNAVAILABLE
    assert "LOOM_KEEPASS_DB_TEAM_APP_PATH" in exc.value.message and '"team/app".path' in exc.value.message
    with pytest.raises(SecretError) as exc:
        aliases.source("team/app", {"team/app": conf("/x", None)}, {}, {}, "/")
    assert "names no credentials" in exc.value.message and "LOOM_KEEPASS_DB_TEAM_APP_PASSWORD_ENV" in exc.value.message

    db = tmp_path / "db.kdbx"
    src = aliases.VaultSource("a", str(db), "KP_PW", "KP_KEY", "config.yml")
    with pytest.raises(SecretError) as exc:
        aliases.unlock(src, {}, str(tmp_path))
    assert exc.value.message == f'keepass alias "a": database {db} does not exist (path from config.yml)'
    db.write_bytes(b"x")
    with pytest.raises(SecretError) as exc:
        aliases.unlock(src, {}, str(tmp_path))
    assert exc.value.message == 'keepass alias "a": its master password is read from $KP_PW, which is not set'
    with pytest.raises(SecretError) as exc:
        aliases.unlock(src, {"KP_PW": "p"}, str(tmp_path))
    assert "$KP_KEY, which is not set" in exc.value.message
    with pytest.raises(SecretError) as exc:
        aliases.unlock(src, {"KP_PW": "p", "KP_KEY": "missing.key"}, str(tmp_path))
    assert exc.value.message == f'keepass alias "a": keyfile {tmp_path / "missing.key"} (from $KP_KEY) does not exist'
    (tmp_path / "k.key").write_bytes(b"k")
    assert aliases.unlock(src, {"KP_PW": "p", "KP_KEY": "k.key"}, str(tmp_path)) == ("p", str(tmp_path / "k.key"))
