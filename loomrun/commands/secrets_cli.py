"""The `loom secrets` command tree (spec §7.4), loaded by `cli.py` only when `loom secrets` is used.
Runs in the `loom` process; thin: each command calls `loomrun/commands/secrets.py`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from loomrun.cli import _invoke


@click.group("secrets")
def group() -> None:
    """Manage KeePass vaults and 1Password items (values only from variables, never printed)."""


@group.group("keepass")
def secrets_keepass() -> None:
    """KeePass databases (.kdbx) behind keepass:// refs (needs loomrun[keepass])."""


@secrets_keepass.group("vault")
def keepass_vault() -> None:
    """Create a database, rotate its master credentials, list the configured aliases."""


@secrets_keepass.group("item")
def keepass_item() -> None:
    """Create, update and list entry fields."""


@group.group("op")
def secrets_op() -> None:
    """1Password vaults and items behind op:// refs (needs loomrun[op])."""


@secrets_op.group("vault")
def op_vault() -> None:
    """The vaults the service account sees."""


@secrets_op.group("item")
def op_item() -> None:
    """Create and list item fields."""


def _json_flag(fn: Callable[..., None]) -> Callable[..., None]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def _credential_flags(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option("--keyfile-from-env", "keyfile_env", metavar="VAR",
                      help="Variable holding the keyfile's path.")(fn)
    return click.option("--password-from-env", "password_env", metavar="VAR",
                        help="Variable holding the master password.")(fn)


def _field_flags(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option("--value-from-env", "value_env", metavar="VAR", required=True,
                      help="Variable holding the value (never a value on the command line).")(fn)
    fn = click.option("--field", required=True, help="Field name (password, username, url, notes or custom).")(fn)
    return click.option("--item-path", required=True, help="Groups and title joined by /.")(fn)


@keepass_vault.command("create")
@click.option("--vault-path", help="The alias (default: the git origin URL's path, group/project/repo).")
@click.option("--database-path", help="Where to write the .kdbx (default .loom/keepass/<KEY>.kdbx).")
@_credential_flags
@click.option("--force", is_flag=True, help="Replace an existing database file.")
@_json_flag
def keepass_vault_create(**kwargs: Any) -> None:
    """Create a database and add its alias to .loom/config.yml."""
    from loomrun.commands import secrets as cmd

    _invoke("loom secrets keepass vault create", lambda: cmd.vault_create(**kwargs))


@keepass_vault.command("update")
@click.argument("alias")
@_credential_flags
@_json_flag
def keepass_vault_update(**kwargs: Any) -> None:
    """Rotate the master credentials (opened with the alias's current ones)."""
    from loomrun.commands import secrets as cmd

    _invoke("loom secrets keepass vault update", lambda: cmd.vault_update(**kwargs))


@keepass_vault.command("list")
@_json_flag
def keepass_vault_list(as_json: bool) -> None:
    """One line per configured alias: path and credential kinds."""
    from loomrun.commands import secrets as cmd

    _invoke("loom secrets keepass vault list", lambda: cmd.vault_list(as_json))


@keepass_item.command("create")
@click.argument("alias")
@_field_flags
@_json_flag
def keepass_item_create(**kwargs: Any) -> None:
    """Add a field (and the entry, and its groups, when missing)."""
    from loomrun.commands import secrets as cmd

    _invoke("loom secrets keepass item create", lambda: cmd.item_set(update=False, **kwargs))


@keepass_item.command("update")
@click.argument("alias")
@_field_flags
@_json_flag
def keepass_item_update(**kwargs: Any) -> None:
    """Change an existing field."""
    from loomrun.commands import secrets as cmd

    _invoke("loom secrets keepass item update", lambda: cmd.item_set(update=True, **kwargs))


@keepass_item.command("list")
@click.argument("alias")
@_json_flag
def keepass_item_list(alias: str, as_json: bool) -> None:
    """One line per entry: its path and field names (never values)."""
    from loomrun.commands import secrets as cmd

    _invoke("loom secrets keepass item list", lambda: cmd.item_list(alias, as_json))


@op_vault.command("list")
@_json_flag
def op_vault_list(as_json: bool) -> None:
    """name=... id=... for each vault."""
    from loomrun.commands import secrets as cmd

    _invoke("loom secrets op vault list", lambda: cmd.op_vault_list(as_json))


@op_item.command("create")
@click.option("--vault", required=True, help="Vault title or id.")
@_field_flags
@_json_flag
def op_item_create(**kwargs: Any) -> None:
    """Add a field to an item (the item is created when missing)."""
    from loomrun.commands import secrets as cmd

    _invoke("loom secrets op item create", lambda: cmd.op_item_create(**kwargs))


@op_item.command("list")
@click.option("--vault", required=True, help="Vault title or id.")
@_json_flag
def op_item_list(vault: str, as_json: bool) -> None:
    """One line per item: its title and field names (never values)."""
    from loomrun.commands import secrets as cmd

    _invoke("loom secrets op item list", lambda: cmd.op_item_list(vault, as_json))
