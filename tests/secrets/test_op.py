"""1Password (spec §7.1, §7.2): the resolution logic and every error path against the fake client
(`FakeOpClient`, a real implementation of the `OpClient` Protocol over a JSON file), the real SDK up
to where it needs the network, and one live test (deselected without LOOM_TEST_OP_TOKEN)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from loomrun.workflow.secret_refs import OpRef, parse
from tests.secrets.conftest import LIVE_TOKEN_ENV, read_account, write_account
from workers.secrets import op
from workers.secrets.errors import PROVIDER_UNAVAILABLE, REF_INVALID, REF_NOT_FOUND, SecretError

TOKEN = "ops_fake_token_1234"


def client(account: Path, token: str = TOKEN) -> op.OpClient:
    return op.connect(None, {"OP_SERVICE_ACCOUNT_TOKEN": token, op.FAKE_ENV: str(account)})


def ref(text: str) -> OpRef:
    parsed = parse(text)
    assert isinstance(parsed, OpRef)
    return parsed


def test_multi_segment_item_paths_resolve(fake_op: Path) -> None:
    c = client(fake_op)
    assert op.resolve(c, ref("op://Engineering/services/loom/deploy/token")) == "op-tok-91b7e"
    assert op.resolve(c, ref("op://vlt_eng1/itm_deploy/password")) == "op-pw-5d2c8"  # ids work too


@pytest.mark.parametrize(("text", "code", "says"), [
    ("op://Nowhere/services/loom/deploy/token", REF_NOT_FOUND,
     '1Password: no vault "Nowhere" (vaults this token sees: Engineering, Platform)'),
    ("op://Engineering/services/loom/other/token", REF_NOT_FOUND,
     '1Password: no item "services/loom/other" in vault "Engineering"'),
    ("op://Engineering/services/loom/deploy/api_key", REF_NOT_FOUND,
     '1Password: item "services/loom/deploy" has no field "api_key" (its fields: token, password)'),
    ("op://Engineering/twin/token", REF_INVALID,
     '1Password: item "twin" is ambiguous in vault "Engineering": items itm_twin1 and itm_twin2; use the item id'),
])
def test_errors_have_their_codes(fake_op: Path, text: str, code: str, says: str) -> None:
    with pytest.raises(SecretError) as exc:
        op.resolve(client(fake_op), ref(text))
    assert (exc.value.code, exc.value.message) == (code, says)


def test_ambiguous_field_and_vault(fake_op: Path) -> None:
    data = read_account(fake_op)
    data["vaults"].append({"id": "vlt_eng2", "title": "Engineering", "items": []})
    fields = data["vaults"][0]["items"][0]["fields"]
    fields[0]["id"] = "f1"  # an id wins over titles: without one, two fields titled "token" are ambiguous
    fields.append({"id": "x9", "title": "token", "section": "old", "value": "v"})
    write_account(fake_op, data)
    with pytest.raises(SecretError) as exc:
        op.resolve(client(fake_op), ref("op://Engineering/services/loom/deploy/token"))
    assert exc.value.code == REF_INVALID and "vaults vlt_eng1 and vlt_eng2" in exc.value.message
    with pytest.raises(SecretError) as exc:
        op.resolve(client(fake_op), ref("op://vlt_eng1/services/loom/deploy/token"))
    assert exc.value.code == REF_INVALID and '"token" and "old.token"' in exc.value.message


def test_token_missing_refused_or_backend_unreachable(fake_op: Path) -> None:
    with pytest.raises(SecretError) as exc:
        op.connect("LOOM_OP_TOKEN", {op.FAKE_ENV: str(fake_op)})
    assert (exc.value.code, exc.value.message) == (
        PROVIDER_UNAVAILABLE, "1Password: the service-account token is read from $LOOM_OP_TOKEN, which is not set")
    with pytest.raises(SecretError) as exc:
        client(fake_op, token="ops_wrong_token_5678")
    assert exc.value.code == PROVIDER_UNAVAILABLE and "ops_wrong_token_5678" not in exc.value.message
    data = read_account(fake_op)
    data["unreachable"] = True
    write_account(fake_op, data)
    with pytest.raises(SecretError) as exc:
        client(fake_op)
    assert exc.value.code == PROVIDER_UNAVAILABLE


def test_put_field_and_list(fake_op: Path) -> None:
    c = client(fake_op)
    assert op.put_field(c, "Platform", "ci/new/item", "token", "v1", update=False) == "created item"
    assert op.put_field(c, "Platform", "ci/new/item", "password", "v2", update=False) == "created field"
    assert op.put_field(c, "Platform", "ci/new/item", "token", "v3", update=True) == "updated field"
    with pytest.raises(SecretError) as exc:
        op.put_field(c, "Platform", "ci/new/item", "token", "v4", update=False)
    assert exc.value.code == REF_INVALID
    assert op.resolve(c, ref("op://Platform/ci/new/item/token")) == "v3"
    assert op.list_items(c, "Platform") == [("ci/new/item", ["token", "password"])]


# -- the real SDK, as far as it goes without the network -------------------------------------------

@pytest.mark.parametrize("token", ["", "not-a-token", "ops_eyJub3QiOiJyZWFsIn0"])
def test_sdk_client_without_a_usable_token(token: str) -> None:
    from workers.secrets.onepassword import SdkClient

    if not token:
        with pytest.raises(SecretError) as exc:
            op.connect(None, {})
        assert exc.value.code == PROVIDER_UNAVAILABLE and "$OP_SERVICE_ACCOUNT_TOKEN" in exc.value.message
        return
    with pytest.raises(SecretError) as exc:
        SdkClient(token, "OP_SERVICE_ACCOUNT_TOKEN")
    assert exc.value.code == PROVIDER_UNAVAILABLE
    assert exc.value.message.startswith("1Password: cannot sign in with the token from $OP_SERVICE_ACCOUNT_TOKEN: ")
    assert token not in exc.value.message


@pytest.mark.op_live
def test_live_account_round_trip() -> None:
    """Against a real 1Password account: LOOM_TEST_OP_TOKEN (and LOOM_TEST_OP_VAULT, default the first
    vault the token sees). Creates an item, resolves it through loom's own parsing, deletes it."""
    token = os.environ[LIVE_TOKEN_ENV]
    c = op.connect("LOOM_TEST_OP_TOKEN", {"LOOM_TEST_OP_TOKEN": token})
    vaults = c.vaults()
    assert vaults
    vault = os.environ.get("LOOM_TEST_OP_VAULT") or vaults[0].title
    path = f"loom-test/{uuid.uuid4().hex[:8]}/deploy"
    value = uuid.uuid4().hex
    op.put_field(c, vault, path, "token", value, update=False)
    try:
        assert op.resolve(c, ref(f"op://{vault}/{path}/token")) == value
        assert (path, ["token"]) in [(t, [f for f in fs if f == "token"]) for t, fs in op.list_items(c, vault)]
    finally:
        from workers.secrets.onepassword import SdkClient

        assert isinstance(c, SdkClient)
        v = op.find_vault(c, vault)
        item = op.find_item(c, v, path)
        c._loop.run_until_complete(c._client.items.delete(v.id, item.id))
        c.close()
