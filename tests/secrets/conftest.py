"""Fixtures for the secrets tests (spec §7): real KeePass databases, a fake 1Password account in a
JSON file (`LOOM_OP_FAKE`), and the selection rule of the live 1Password test. Runs in pytest.

`op_live` tests need a real service-account token (`LOOM_TEST_OP_TOKEN`) and the network; without
the token they are *deselected*, never skipped: CI has no token, and with CI=true a skip fails.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LIVE_TOKEN_ENV = "LOOM_TEST_OP_TOKEN"
PASSWORD = "correct horse battery staple"
VALUES = {"password": "pw-Deploy-7f3a9", "token": "tok-Loom-c41e2", "username": "deployer"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(LIVE_TOKEN_ENV):
        return
    live = [item for item in items if item.get_closest_marker("op_live")]
    if live:
        config.hook.pytest_deselected(items=live)
        items[:] = [item for item in items if not item.get_closest_marker("op_live")]


def make_vault(path: Path, password: str | None = PASSWORD, keyfile: str | None = None, fast: bool = True) -> Path:
    """A real .kdbx: services/loom/deploy (username, password, custom token), other/deploy-other, and
    two entries named `twin` in different groups (for ambiguity). `fast`: Argon2 with 1 MiB and 2
    passes instead of KeePass's 64 MiB and ~1 s, so that tests do not pay a second per open; the
    open-count measurement uses the real cost (`fast=False`)."""
    from pykeepass import create_database

    kp = create_database(str(path), password=password, keyfile=keyfile)
    if fast:
        params = kp.kdbx.header.value.dynamic_header.kdf_parameters.data.dict
        params["M"].value, params["I"].value = 1 << 20, 2
    services = kp.add_group(kp.root_group, "services")
    loom = kp.add_group(services, "loom")
    deploy = kp.add_entry(loom, "deploy", VALUES["username"], VALUES["password"], url="https://db.example")
    deploy.set_custom_property("token", VALUES["token"], protect=True)
    other = kp.add_group(kp.root_group, "other")
    kp.add_entry(other, "deploy-other", "x", "other-pw")
    kp.add_entry(loom, "twin", "a", "twin-a-pw")
    kp.add_entry(other, "twin", "b", "twin-b-pw")
    kp.save()
    return path


@pytest.fixture(scope="session")
def vault_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made once per session (a key derivation costs about a second); tests copy it."""
    return make_vault(tmp_path_factory.mktemp("vault") / "template.kdbx")


@pytest.fixture
def vault(vault_template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "vaults" / "main.kdbx"
    path.parent.mkdir()
    shutil.copy(vault_template, path)
    return path


@pytest.fixture
def fake_op(tmp_path: Path) -> Iterator[Path]:
    """A fake 1Password account: vault Engineering with services/loom/deploy (token, password)."""
    path = tmp_path / "op-account.json"
    write_account(path, {"token": "ops_fake_token_1234", "vaults": [
        {"id": "vlt_eng1", "title": "Engineering", "items": [
            {"id": "itm_deploy", "title": "services/loom/deploy", "fields": [
                {"id": "token", "title": "token", "section": "", "value": "op-tok-91b7e"},
                {"id": "password", "title": "password", "section": "", "value": "op-pw-5d2c8"}]},
            {"id": "itm_twin1", "title": "twin", "fields": []},
            {"id": "itm_twin2", "title": "twin", "fields": []}]},
        {"id": "vlt_plat2", "title": "Platform", "items": []}]})
    yield path


def write_account(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data))


def read_account(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def keepass_config(repo: Path, vault: Path, alias: str = "local/main", **extra: str) -> None:
    """`.loom/config.yml` declaring `alias` with a path relative to `.loom/` and passwordEnv KP_PASSWORD."""
    rel = os.path.relpath(vault, repo / ".loom")
    fields = {"path": rel, "passwordEnv": "KP_PASSWORD", **extra}
    body = ", ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items())
    (repo / ".loom").mkdir(exist_ok=True)
    (repo / ".loom" / "config.yml").write_text(
        f"providers:\n  keepass:\n    aliases:\n      {json.dumps(alias)}: {{{body}}}\n")


def all_bytes(root: Path) -> Iterator[tuple[Path, bytes]]:
    """Every file under `root` (names included: a path is written bytes too)."""
    for path in root.rglob("*"):
        yield path, str(path.relative_to(root)).encode()
        if path.is_file() and not path.is_symlink():
            yield path, path.read_bytes()


def assert_nowhere(value: str, root: Path, *texts: str, skip: tuple[str, ...] = ("workspaces",)) -> None:
    raw = value.encode()
    for text in texts:
        assert value not in text, text
    for path, data in all_bytes(root):
        if not set(path.relative_to(root).parts) & set(skip):
            assert raw not in data, path
