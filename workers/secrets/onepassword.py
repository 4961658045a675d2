"""The official 1Password SDK (`onepassword-sdk`) behind `op.OpClient`. Runs in the secrets broker
and in `loom secrets op` (the `loom` process).

The only module that imports `onepassword` (the optional extra `loomrun[op]`). The SDK is async; one
private event loop per client runs its calls, one at a time (the broker serializes them). Every
SDK error becomes SECRETS_PROVIDER_UNAVAILABLE with the token scrubbed from the message; the token
itself is only ever handed to `Client.authenticate`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from loomrun import __version__
from workers.secrets.errors import PROVIDER_UNAVAILABLE, SecretError, missing_extra, scrub
from workers.secrets.op import OpField, OpItem, OpVault

T = TypeVar("T")
CUSTOM_SECTION = "loom"


class SdkClient:
    def __init__(self, token: str, token_env: str) -> None:
        try:
            import onepassword
        except ImportError:
            raise missing_extra("op") from None
        self._sdk: Any = onepassword
        self._token = token  # only to scrub it from the SDK's messages
        self._loop = asyncio.new_event_loop()
        self._item: Any = None  # the last item fetched: a ref reads its fields, then one value
        try:
            self._client: Any = self._loop.run_until_complete(onepassword.Client.authenticate(
                auth=token, integration_name="loom", integration_version=f"v{__version__}"))
        except Exception as exc:
            self._loop.close()
            raise SecretError(PROVIDER_UNAVAILABLE, f"1Password: cannot sign in with the token from "
                                                    f"${token_env}: {scrub(str(exc), token)}") from None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._loop.run_until_complete(coro)
        except Exception as exc:
            raise SecretError(PROVIDER_UNAVAILABLE, f"1Password: {scrub(str(exc), self._token)}") from None

    def vaults(self) -> list[OpVault]:
        return [OpVault(v.id, v.title) for v in self._call(self._client.vaults.list())]

    def items(self, vault_id: str) -> list[OpItem]:
        sdk = self._sdk
        active = sdk.ItemListFilterByState(content=sdk.ItemListFilterByStateInner(active=True, archived=False))
        return [OpItem(i.id, i.title) for i in self._call(self._client.items.list(vault_id, active))]

    def find_items(self, vault_id: str, title: str) -> list[OpItem]:
        found = self.items(vault_id)
        return [i for i in found if i.id == title] or [i for i in found if i.title == title]

    def _get(self, vault_id: str, item_id: str) -> Any:
        item = self._item
        if item is None or item.id != item_id or item.vault_id != vault_id:
            item = self._item = self._call(self._client.items.get(vault_id, item_id))
        return item

    def fields(self, vault_id: str, item_id: str) -> list[OpField]:
        item = self._get(vault_id, item_id)
        titles = {s.id: s.title for s in item.sections}
        return [OpField(f.id, f.title, titles.get(f.section_id or "", "")) for f in item.fields]

    def read_field(self, vault_id: str, item_id: str, field_id: str) -> str:
        item = self._get(vault_id, item_id)
        self._item = None  # the value is not kept
        return next(str(f.value) for f in item.fields if f.id == field_id)

    def _field(self, name: str, value: str) -> Any:
        sdk = self._sdk
        builtin = name in ("username", "password")
        return sdk.ItemField(id=name, title=name, value=value, section_id=None if builtin else CUSTOM_SECTION,
                             field_type=sdk.ItemFieldType.TEXT if name == "username" else sdk.ItemFieldType.CONCEALED)

    def create_item(self, vault_id: str, title: str, field: str, value: str) -> OpItem:
        sdk = self._sdk
        params = sdk.ItemCreateParams(
            category=sdk.ItemCategory.LOGIN, vault_id=vault_id, title=title, fields=[self._field(field, value)],
            sections=[sdk.ItemSection(id=CUSTOM_SECTION, title="")])
        item = self._call(self._client.items.create(params))
        return OpItem(item.id, item.title)

    def write_field(self, vault_id: str, item_id: str, field: str, value: str) -> None:
        item = self._call(self._client.items.get(vault_id, item_id))
        for existing in item.fields:
            if existing.id == field or existing.title == field:
                existing.value = value
                break
        else:
            item.fields.append(self._field(field, value))
            if not any(s.id == CUSTOM_SECTION for s in item.sections):
                item.sections.append(self._sdk.ItemSection(id=CUSTOM_SECTION, title=""))
        self._call(self._client.items.put(item))
        self._item = None

    def close(self) -> None:
        self._loop.close()
