"""Secret ref syntax (spec §7.1). PURE; `loom check` reports what is wrong with a ref, and the
worker's secret resolution can split one the same way.

    env://NAME                               NAME: a variable name
    keepass://<alias>#<entry path>:<field>   alias: everything up to the first `#` (may hold `/`);
                                             field: after the last `:`; entry path: groups and title
                                             joined by `/`, no empty part
    op://<vault>/<item path>/<field>         vault: the first segment, field: the last, item path:
                                             everything between (may hold `/`); no empty segment
"""

from __future__ import annotations

import re
from typing import NamedTuple

SCHEMES = ("env", "keepass", "op")
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHAPES = "env://NAME, keepass://<alias>#<entry path>:<field> or op://<vault>/<item>/<field>"


class SecretRef(NamedTuple):
    scheme: str  # env | keepass | op
    location: str  # env: the variable; keepass: the alias; op: the vault
    path: str  # keepass: the entry path; op: the item path; env: ""
    field: str  # keepass / op: the field; env: ""


class RefError(ValueError):
    """What is wrong with a ref, in words (the ref is not a secret: it may be shown)."""


def parse_ref(ref: str) -> SecretRef:
    scheme, sep, rest = ref.partition("://")
    if not sep:
        raise RefError(f'secret ref "{ref}" has no scheme; expected {_SHAPES}')
    if scheme not in SCHEMES:
        raise RefError(f'unknown secret ref scheme "{scheme}://" in "{ref}"; expected {_SHAPES}')
    if ref != ref.strip():
        raise RefError(f'secret ref "{ref}" starts or ends with blanks')
    return {"env": _env, "keepass": _keepass, "op": _op}[scheme](ref, rest)


def _env(ref: str, name: str) -> SecretRef:
    if not name:
        raise RefError(f'secret ref "{ref}" names no variable; write env://NAME')
    if not _VAR.fullmatch(name):
        raise RefError(f'secret ref "{ref}": "{name}" is not a variable name (letters, digits and _, '
                       "not starting with a digit)")
    return SecretRef("env", name, "", "")


def _keepass(ref: str, rest: str) -> SecretRef:
    alias, sep, entry_field = rest.partition("#")
    if not sep:
        raise RefError(f'secret ref "{ref}" has no "#<entry path>" after the alias; '
                       "write keepass://<alias>#<entry path>:<field>")
    if not alias.strip():
        raise RefError(f'secret ref "{ref}" has no alias before "#"; write keepass://<alias>#<entry path>:<field>')
    entry, colon, field = entry_field.rpartition(":")
    if not colon:
        raise RefError(f'secret ref "{ref}" has no ":<field>" after the entry path '
                       "(e.g. :password, :username or a custom field)")
    if not field.strip():
        raise RefError(f'secret ref "{ref}" has an empty field after ":"')
    if not entry.strip():
        raise RefError(f'secret ref "{ref}" has an empty entry path between "#" and ":"')
    if any(not part.strip() for part in entry.split("/")):
        raise RefError(f'secret ref "{ref}" has an empty group or title in its entry path "{entry}"')
    return SecretRef("keepass", alias, entry, field)


def _op(ref: str, rest: str) -> SecretRef:
    parts = rest.split("/")
    if len(parts) < 3:
        missing = "a vault, an item and a field" if not rest else "an item and a field" if len(parts) == 1 \
            else "a field"
        raise RefError(f'secret ref "{ref}" lacks {missing}; write op://<vault>/<item>/<field>')
    if any(not part.strip() for part in parts):
        raise RefError(f'secret ref "{ref}" has an empty segment; write op://<vault>/<item>/<field>')
    return SecretRef("op", parts[0], "/".join(parts[1:-1]), parts[-1])
