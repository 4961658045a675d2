"""1Password refs and items behind a small Protocol (`OpClient`): the resolution logic, tested
against `fake_op.FakeOpClient`; `onepassword.SdkClient` is the real one. Runs in the secrets broker
(refs) and in `loom secrets op` (the `loom` process).

`op://<vault>/<item path>/<field>`: the item path may hold `/`, which the SDK's own reference parser
rejects, so loom resolves each part itself: the vault by title or id, the item by title (the whole
item path) or id, the field by title or id. Two matches of one name are SECRETS_REF_INVALID naming
both; none is SECRETS_REF_NOT_FOUND. The service-account token comes from the variable named by
`providers.op.serviceAccountTokenEnv` (default OP_SERVICE_ACCOUNT_TOKEN), is handed to the client and
nowhere else: never written, never in a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

from loomrun.workflow.secret_refs import OpRef
from workers.secrets.errors import PROVIDER_UNAVAILABLE, REF_INVALID, REF_NOT_FOUND, SecretError

DEFAULT_TOKEN_ENV = "OP_SERVICE_ACCOUNT_TOKEN"
FAKE_ENV = "LOOM_OP_FAKE"  # a JSON file that stands in for a 1Password account (tests, demos)


class OpVault(NamedTuple):
    id: str
    title: str


class OpItem(NamedTuple):
    id: str
    title: str


class OpField(NamedTuple):
    id: str
    title: str
    section: str  # "" for an item's built-in fields


class OpClient(Protocol):
    """What loom needs of a 1Password account. Backend failures raise SecretError (PROVIDER_UNAVAILABLE)."""

    def vaults(self) -> list[OpVault]: ...

    def find_items(self, vault_id: str, title: str) -> list[OpItem]:
        """Items of the vault whose title (or id) is `title`."""
        ...

    def items(self, vault_id: str) -> list[OpItem]: ...

    def fields(self, vault_id: str, item_id: str) -> list[OpField]:
        """The item's fields, without their values."""
        ...

    def read_field(self, vault_id: str, item_id: str, field_id: str) -> str: ...

    def create_item(self, vault_id: str, title: str, field: str, value: str) -> OpItem: ...

    def write_field(self, vault_id: str, item_id: str, field: str, value: str) -> None:
        """Set `field` (by title or id) on the item, adding it when the item has none of that name."""
        ...

    def close(self) -> None: ...


def connect(token_env: str | None, environ: Mapping[str, str]) -> OpClient:
    """A signed-in client; SECRETS_PROVIDER_UNAVAILABLE naming the variable when the token is missing."""
    var = token_env or DEFAULT_TOKEN_ENV
    token = environ.get(var)
    if not token:
        raise SecretError(PROVIDER_UNAVAILABLE, f"1Password: the service-account token is read from ${var}, "
                                                "which is not set")
    if environ.get(FAKE_ENV):
        from workers.secrets.fake_op import FakeOpClient

        return FakeOpClient(environ[FAKE_ENV], token, var)
    from workers.secrets.onepassword import SdkClient

    return SdkClient(token, var)


def find_vault(client: OpClient, name: str) -> OpVault:
    vaults = client.vaults()
    hits = [v for v in vaults if v.id == name] or [v for v in vaults if v.title == name]
    if not hits:
        seen = ", ".join(sorted(v.title for v in vaults)) or "none"
        raise SecretError(REF_NOT_FOUND, f'1Password: no vault "{name}" (vaults this token sees: {seen})')
    if len(hits) > 1:
        raise SecretError(REF_INVALID, f'1Password: vault name "{name}" is ambiguous: vaults {hits[0].id} and '
                                       f"{hits[1].id}; use the vault id")
    return hits[0]


def find_item(client: OpClient, vault: OpVault, path: str) -> OpItem:
    hits = client.find_items(vault.id, path)
    if not hits:
        raise SecretError(REF_NOT_FOUND, f'1Password: no item "{path}" in vault "{vault.title}"')
    if len(hits) > 1:
        raise SecretError(REF_INVALID, f'1Password: item "{path}" is ambiguous in vault "{vault.title}": items '
                                       f"{hits[0].id} and {hits[1].id}; use the item id")
    return hits[0]


def find_field(fields: list[OpField], name: str, item: str) -> OpField | None:
    hits = [f for f in fields if f.id == name] or [f for f in fields if f.title == name]
    if len(hits) > 1:
        where = " and ".join(f'"{f.section}.{f.title}"' if f.section else f'"{f.title}"' for f in hits[:2])
        raise SecretError(REF_INVALID, f'1Password: field "{name}" of item "{item}" is ambiguous: {where}; '
                                       "use the field id")
    return hits[0] if hits else None


def resolve(client: OpClient, ref: OpRef) -> str:
    vault = find_vault(client, ref.vault)
    item = find_item(client, vault, ref.item)
    fields = client.fields(vault.id, item.id)
    field = find_field(fields, ref.field, ref.item)
    if field is None:
        have = ", ".join(f.title for f in fields) or "none"
        raise SecretError(REF_NOT_FOUND, f'1Password: item "{ref.item}" has no field "{ref.field}" (its fields: '
                                         f"{have})")
    return client.read_field(vault.id, item.id, field.id)


def put_field(client: OpClient, vault_name: str, item_path: str, field: str, value: str, *,
              update: bool) -> str:
    """Create the field (and the item when there is none), or update an existing one. Returns what
    was done: "created item", "created field" or "updated field"."""
    vault = find_vault(client, vault_name)
    items = client.find_items(vault.id, item_path)
    if len(items) > 1:
        find_item(client, vault, item_path)  # raises: ambiguous
    if not items:
        if update:
            raise SecretError(REF_NOT_FOUND, f'1Password: no item "{item_path}" in vault "{vault.title}"')
        client.create_item(vault.id, item_path, field, value)
        return "created item"
    item = items[0]
    existing = find_field(client.fields(vault.id, item.id), field, item_path)
    if update and existing is None:
        raise SecretError(REF_NOT_FOUND, f'1Password: item "{item_path}" has no field "{field}"')
    if not update and existing is not None:
        raise SecretError(REF_INVALID, f'1Password: item "{item_path}" already has a field "{field}"')
    client.write_field(vault.id, item.id, existing.id if existing else field, value)
    return "updated field" if update else "created field"


def list_items(client: OpClient, vault_name: str) -> list[tuple[str, list[str]]]:
    vault = find_vault(client, vault_name)
    return sorted((item.title, [f.title for f in client.fields(vault.id, item.id)])
                  for item in client.items(vault.id))
