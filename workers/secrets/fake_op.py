"""A 1Password account in a JSON file, implementing `op.OpClient`: the tests' stand-in for the SDK,
selected by `LOOM_OP_FAKE=<file>` (the network is never needed to test the resolution logic, the
commands or a run). Runs wherever `op.connect` is called.

File shape::

    {"token": "ops_...",                 # optional: any other token is refused
     "unreachable": false,               # true: every call fails as an unreachable backend would
     "sign_ins": 0,                      # incremented by every client made (tests count them)
     "vaults": [{"id": "v1", "title": "Engineering",
                 "items": [{"id": "i1", "title": "services/loom/deploy",
                            "fields": [{"id": "token", "title": "token", "section": "", "value": "..."}]}]}]}

Writes (sign-ins, new items and fields) go back to the file atomically.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from workers.secrets.errors import PROVIDER_UNAVAILABLE, SecretError
from workers.secrets.op import OpField, OpItem, OpVault


class FakeOpClient:
    def __init__(self, path: str, token: str, token_env: str) -> None:
        self.path = path
        data = self._load()
        if data.get("token") not in (None, token):
            raise SecretError(PROVIDER_UNAVAILABLE, f"1Password: cannot sign in with the token from ${token_env}: "
                                                    "the service account token was refused")
        data["sign_ins"] = int(data.get("sign_ins", 0)) + 1
        self._save(data)

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data: dict[str, Any] = json.load(fh)
        except (OSError, ValueError) as exc:
            raise SecretError(PROVIDER_UNAVAILABLE, f"1Password (fake): cannot read {self.path}: {exc}") from None
        if data.get("unreachable"):
            raise SecretError(PROVIDER_UNAVAILABLE, "1Password: the service is unreachable")
        return data

    def _save(self, data: dict[str, Any]) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, self.path)

    def _vault(self, data: dict[str, Any], vault_id: str) -> dict[str, Any]:
        return next(v for v in data["vaults"] if v["id"] == vault_id)

    def _item(self, data: dict[str, Any], vault_id: str, item_id: str) -> dict[str, Any]:
        return next(i for i in self._vault(data, vault_id)["items"] if i["id"] == item_id)

    def vaults(self) -> list[OpVault]:
        return [OpVault(v["id"], v["title"]) for v in self._load()["vaults"]]

    def items(self, vault_id: str) -> list[OpItem]:
        return [OpItem(i["id"], i["title"]) for i in self._vault(self._load(), vault_id)["items"]]

    def find_items(self, vault_id: str, title: str) -> list[OpItem]:
        found = self.items(vault_id)
        return [i for i in found if i.id == title] or [i for i in found if i.title == title]

    def fields(self, vault_id: str, item_id: str) -> list[OpField]:
        item = self._item(self._load(), vault_id, item_id)
        return [OpField(f["id"], f["title"], f.get("section", "")) for f in item["fields"]]

    def read_field(self, vault_id: str, item_id: str, field_id: str) -> str:
        item = self._item(self._load(), vault_id, item_id)
        return str(next(f["value"] for f in item["fields"] if f["id"] == field_id))

    def create_item(self, vault_id: str, title: str, field: str, value: str) -> OpItem:
        data = self._load()
        item_id = uuid.uuid4().hex[:26]
        self._vault(data, vault_id)["items"].append(
            {"id": item_id, "title": title, "fields": [{"id": field, "title": field, "section": "", "value": value}]})
        self._save(data)
        return OpItem(item_id, title)

    def write_field(self, vault_id: str, item_id: str, field: str, value: str) -> None:
        data = self._load()
        item = self._item(data, vault_id, item_id)
        for existing in item["fields"]:
            if field in (existing["id"], existing["title"]):
                existing["value"] = value
                break
        else:
            item["fields"].append({"id": field, "title": field, "section": "", "value": value})
        self._save(data)

    def close(self) -> None:
        pass
