"""Secret refs (spec §7.1): `env://NAME`, `keepass://<alias>#<entry path>:<field>`,
`op://<vault>/<item path>/<field>`. PURE; runs wherever a ref is read: `loom check` and `loom run`
(validation), the worker (env refs), the secrets broker (vault refs).

One parser for both sides, so what `loom check` accepts is exactly what a run can resolve.
Decisions where the spec is silent: a keepass field is what follows the *last* `:` (an entry
title may hold `:`, a field name may not); no part may be empty or begin or end with blanks.
"""

from __future__ import annotations

import re
from typing import NamedTuple

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SCHEMES = ("env", "keepass", "op")
VAULT_SCHEMES = ("keepass", "op")


class RefError(ValueError):
    """A malformed ref; the message says what is wrong and how to write it."""


class EnvRef(NamedTuple):
    name: str


class KeepassRef(NamedTuple):
    alias: str
    entry: str  # groups and title joined by "/"
    field: str


class OpRef(NamedTuple):
    vault: str
    item: str  # may hold "/"
    field: str


Ref = EnvRef | KeepassRef | OpRef


def scheme_of(ref: str) -> str:
    return ref.partition("://")[0]


def parse(ref: str) -> Ref:
    """The parts of `ref`, or RefError naming the first problem."""
    scheme, sep, rest = ref.partition("://")
    if not sep:
        raise RefError("a secret ref is <scheme>://...; write env://NAME, keepass://<alias>#<entry>:<field> "
                       "or op://<vault>/<item>/<field>")
    if scheme not in SCHEMES:
        raise RefError(f'unknown secret scheme "{scheme}"; use env://, keepass:// or op://')
    if scheme == "env":
        if not ENV_NAME.match(rest):
            raise RefError("env:// needs a variable name (letters, digits, _), as in env://DEPLOY_TOKEN")
        return EnvRef(rest)
    if scheme == "keepass":
        return _keepass(rest)
    return _op(rest)


def _keepass(rest: str) -> KeepassRef:
    alias, sep, tail = rest.partition("#")
    if not sep:
        raise RefError('keepass:// needs "#" between the alias and the entry path, as in '
                       "keepass://team/app#services/deploy:password")
    entry, colon, field = tail.rpartition(":")
    if not colon:
        raise RefError('keepass:// needs ":<field>" after the entry path (password, username, url, notes '
                       "or a custom field)")
    for label, part in (("alias", alias), ("entry path", entry), ("field", field)):
        _part(part, f"keepass:// {label}")
    if any(not seg for seg in entry.strip("/").split("/")):
        raise RefError("keepass:// entry path has an empty segment (\"//\")")
    return KeepassRef(alias, entry.strip("/"), field)


def _op(rest: str) -> OpRef:
    parts = rest.split("/")
    if len(parts) < 3 or any(not p for p in parts):
        raise RefError("op:// needs a vault, an item path and a field, each non-empty: op://<vault>/<item>/<field>")
    for part in parts:
        _part(part, "op:// segment")
    return OpRef(parts[0], "/".join(parts[1:-1]), parts[-1])


def _part(text: str, label: str) -> None:
    if not text:
        raise RefError(f"{label} is empty")
    if text != text.strip() or any(ch in text for ch in "\n\r\t\0"):
        raise RefError(f"{label} {text!r} has blanks at its ends or control characters")


def env_key(alias: str) -> str:
    """The `LOOM_KEEPASS_DB_<KEY>_*` key of an alias: upper-cased, every non-alphanumeric -> `_`."""
    return "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in alias).upper()
