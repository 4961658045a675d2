"""KeePass databases (.kdbx) through `pykeepass`. Runs in the secrets broker (reading refs) and in
`loom secrets keepass` (the `loom` process: create, rotate, add and list items).

The only module that imports `pykeepass`, which is GPL-3.0 and therefore the optional extra
`loomrun[keepass]`: imported here, and only when a keepass ref or command is used.

Entry paths are the entry's groups and title joined by `/`, the root group left out; a ref's path
matches by suffix (`loom/deploy` finds `services/loom/deploy`, and `Root/services/loom/deploy` is
accepted too). Entries in the recycle bin never match. Fields: `password`, `username`, `url`,
`notes`, or a custom string field (exact name). A database is saved to a temp file beside it,
0600, then renamed over it, so a crash never leaves half a database.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from workers.secrets.errors import (
    PROVIDER_UNAVAILABLE,
    REF_INVALID,
    REF_NOT_FOUND,
    SecretError,
    missing_extra,
)

STANDARD = ("username", "password", "url", "notes")


def _lib() -> Any:
    try:
        import pykeepass
    except ImportError:
        raise missing_extra("keepass") from None
    return pykeepass


def open_vault(path: str, password: str | None, keyfile: str | None, label: str) -> Vault:
    """The unlocked database (the key derivation costs about a second), or SECRETS_PROVIDER_UNAVAILABLE."""
    lib = _lib()
    try:
        kp = lib.PyKeePass(path, password=password, keyfile=keyfile)
    except lib.exceptions.CredentialsError:
        given = " and ".join(k for k, v in (("password", password), ("keyfile", keyfile)) if v is not None)
        raise SecretError(PROVIDER_UNAVAILABLE, f"{label}: wrong credentials for {path} (the master {given} "
                                                "given do not open it)") from None
    except OSError as exc:
        raise SecretError(PROVIDER_UNAVAILABLE, f"{label}: cannot read {exc.filename or path}: "
                                                f"{exc.strerror or exc} (the user running loom must be able "
                                                "to read it)") from None
    except Exception:  # construct's parse errors, a checksum error: not (or no longer) a database
        raise SecretError(PROVIDER_UNAVAILABLE, f"{label}: {path} is not a KeePass database, or it is "
                                                "damaged (cut short?): point the alias's path at the .kdbx "
                                                "file, or restore it from a backup") from None
    return Vault(kp, path, label)


def create_vault(path: str, password: str | None, keyfile: str | None) -> Vault:
    lib = _lib()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _temp_name(path)
    try:
        kp = lib.create_database(tmp, password=password, keyfile=keyfile)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    kp.filename = path
    return Vault(kp, path, path)


def _temp_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}.tmp")


def _entry_path(entry: Any) -> str:
    return "/".join(part or "" for part in (entry.path or []))


class Vault:
    __slots__ = ("kp", "label", "path")

    def __init__(self, kp: Any, path: str, label: str) -> None:
        self.kp = kp
        self.path = path
        self.label = label

    # -- reading -----------------------------------------------------------------------------
    def entries(self) -> list[Any]:
        bin_group = None
        with contextlib.suppress(Exception):  # a database without a recycle bin
            bin_group = self.kp.recyclebin_group
        out = []
        for entry in self.kp.entries:
            group = entry.group
            in_bin = False
            while bin_group is not None and group is not None:
                if group.uuid == bin_group.uuid:
                    in_bin = True
                    break
                group = group.parentgroup
            if not in_bin:
                out.append(entry)
        return out

    def find(self, wanted: str) -> Any:
        """The one entry whose path ends with `wanted`; REF_NOT_FOUND or REF_INVALID (ambiguous)."""
        wanted = wanted.strip("/")
        root = self.kp.root_group.name or "Root"
        hits = []
        for entry in self.entries():
            full = _entry_path(entry)
            if any(p == wanted or p.endswith("/" + wanted) for p in (full, f"{root}/{full}")):
                hits.append(entry)
        if not hits:
            raise SecretError(REF_NOT_FOUND, f'{self.label}: no entry "{wanted}" in {self.path}')
        if len(hits) > 1:
            names = " and ".join(f'"{_entry_path(e)}"' for e in hits[:2])
            more = f" (and {len(hits) - 2} more)" if len(hits) > 2 else ""
            raise SecretError(REF_INVALID, f'{self.label}: entry path "{wanted}" is ambiguous: it matches '
                                           f"{names}{more}; write more of the path")
        return hits[0]

    def read(self, wanted: str, field: str) -> str:
        entry = self.find(wanted)
        value = _get(entry, field)
        if value is None:
            have = ", ".join(_fields(entry)) or "none"
            raise SecretError(REF_NOT_FOUND, f'{self.label}: entry "{_entry_path(entry)}" has no field "{field}" '
                                             f"(its fields: {have})")
        return value

    def items(self) -> list[tuple[str, list[str]]]:
        return sorted((_entry_path(e), _fields(e)) for e in self.entries())

    # -- writing -----------------------------------------------------------------------------
    def set_field(self, item_path: str, field: str, value: str, *, create: bool) -> None:
        """`item create` (exact path; groups and entry made as needed; the field must not exist yet)
        or `item update` (path by suffix, like a ref; the field must exist)."""
        _check_field_name(field)
        if create:
            entry = self._exact(item_path) or self._make_entry(item_path)
            if _get(entry, field) not in (None, ""):
                raise SecretError(REF_INVALID, f'{self.label}: entry "{_entry_path(entry)}" already has a field '
                                               f'"{field}"; use `item update` to change it')
        else:
            entry = self.find(item_path)
            if _get(entry, field) is None:
                raise SecretError(REF_NOT_FOUND, f'{self.label}: entry "{_entry_path(entry)}" has no field '
                                                 f'"{field}"; use `item create` to add it')
        if field in STANDARD:
            setattr(entry, field, value)
        else:
            entry.set_custom_property(field, value, protect=True)

    def _exact(self, item_path: str) -> Any:
        wanted = item_path.strip("/")
        for entry in self.entries():
            if _entry_path(entry) == wanted:
                return entry
        return None

    def _make_entry(self, item_path: str) -> Any:
        *groups, title = [p for p in item_path.strip("/").split("/") if p]
        if not title:
            raise SecretError(REF_INVALID, "the item path is empty")
        group = self.kp.root_group
        for name in groups:
            child = next((g for g in group.subgroups if g.name == name), None)
            group = child if child is not None else self.kp.add_group(group, name)
        return self.kp.add_entry(group, title, "", "", force_creation=True)

    def set_credentials(self, password: str | None, keyfile: str | None) -> None:
        self.kp.password = password
        self.kp.keyfile = keyfile

    def save(self) -> None:
        tmp = _temp_name(self.path)
        try:
            self.kp.save(filename=tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _get(entry: Any, field: str) -> str | None:
    if field in STANDARD:
        value = getattr(entry, field)
        return None if value is None else str(value)
    value = entry.custom_properties.get(field)  # not get_custom_property: it builds an XPath from the name
    return None if value is None else str(value)


def _fields(entry: Any) -> list[str]:
    standard = [f for f in STANDARD if getattr(entry, f) not in (None, "")]
    return standard + sorted(str(k) for k in entry.custom_properties)


def _check_field_name(field: str) -> None:
    reserved = {"title", "tags", "iconid", "times", "history", "otp"}
    if not field or '"' in field or field.lower() in reserved or (
            field.lower() in STANDARD and field not in STANDARD):
        raise SecretError(REF_INVALID, f'"{field}" cannot be written as a field: use password, username, url, '
                                       "notes or a custom name (without quotes)")
