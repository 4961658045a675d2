"""`loom secrets keepass vault create|update|list`, `loom secrets keepass item create|update|list`,
`loom secrets op vault list`, `loom secrets op item create|list` (spec §7.4). Runs in the `loom`
process; the work is done by `workers/secrets/` (keepass.py, op.py), imported on use.

Never prints a value. Values, master passwords and keyfile paths come only from variables named by
flags (`--value-from-env`, `--password-from-env`, `--keyfile-from-env`). Text goes to stdout one
line per thing; `--json` prints one JSON document instead. Errors are one line (`SECRETS_*: ...`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from loomrun.errors import LoomError
from loomrun.workflow.secret_refs import ENV_NAME, env_key


def _fail(exc: Exception) -> LoomError:
    return LoomError(f"{getattr(exc, 'code', 'SECRETS_ERROR')}: {getattr(exc, 'message', exc)}")


def _out(as_json: bool, doc: Any, lines: list[str]) -> int:
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        for line in lines:
            print(line)
    return 0


# The argument of a `--*-from-env` flag is echoed only when it looks like a variable name by the
# usual convention (upper case): a value typed there by mistake (`--value-from-env hunter2`) must not
# end up in a terminal's scrollback or a CI log.
_SHOWN_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_NAME_ONLY = "give the NAME of a variable that holds the value, never the value itself"


def _from_env(var: str, flag: str) -> str:
    if not ENV_NAME.fullmatch(var):
        raise LoomError(f"{flag}: the argument is not a variable name (not shown, in case it is a value); "
                        f"{_NAME_ONLY}")
    value = os.environ.get(var)
    state = "not set" if value is None else "empty" if value == "" else None
    if state is None:
        return value or ""
    if _SHOWN_NAME.fullmatch(var):
        raise LoomError(f"{flag} {var}: ${var} is {state}")
    raise LoomError(f"{flag}: the variable it names is {state} (the name is not shown, in case it is a value; "
                    f"{_NAME_ONLY})")


def _credentials(password_env: str | None, keyfile_env: str | None) -> tuple[str | None, str | None]:
    if not password_env and not keyfile_env:
        raise LoomError("give --password-from-env VAR and/or --keyfile-from-env VAR (the master credentials)",
                        exit_code=2)
    password = _from_env(password_env, "--password-from-env") if password_env else None
    keyfile = None
    if keyfile_env:
        keyfile = os.path.abspath(_from_env(keyfile_env, "--keyfile-from-env"))
        if not os.path.isfile(keyfile):
            raise LoomError(f"--keyfile-from-env {keyfile_env}: keyfile {keyfile} does not exist (make one, e.g. "
                            f"head -c 64 /dev/urandom > {keyfile})")
    return password, keyfile


def _repo_root() -> Path:
    from loomrun.repo import discover_repo_root

    return discover_repo_root()


def _shown(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


# -- keepass ---------------------------------------------------------------------------------------

class _Aliases:
    """The merged config's aliases and the environment, for one command."""

    def __init__(self) -> None:
        from workers.secrets.aliases import configured_aliases
        from workers.secrets.errors import SecretError

        self.root = _repo_root()
        try:
            self.configured, self.layers = configured_aliases(self.root)
        except SecretError as exc:
            raise _fail(exc) from None

    def source(self, alias: str) -> Any:
        from workers.secrets.aliases import source

        return source(alias, self.configured, self.layers, os.environ, os.getcwd())

    def open(self, alias: str) -> Any:
        from workers.secrets.aliases import unlock
        from workers.secrets.errors import SecretError
        from workers.secrets.keepass import open_vault

        try:
            src = self.source(alias)
            password, keyfile = unlock(src, os.environ, os.getcwd())
            return open_vault(src.path, password, keyfile, f'keepass alias "{alias}"')
        except SecretError as exc:
            raise _fail(exc) from None


def origin_alias(root: Path) -> str:
    """`group/project/repo` from the git `origin` URL (ssh, scp-like or https)."""
    out = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True, text=True,
                         check=False)
    url = out.stdout.strip()
    if out.returncode != 0 or not url:
        raise LoomError("no --vault-path given and this repo has no git origin to take the alias from; "
                        "give --vault-path ALIAS")
    if "://" in url:  # https://host/group/repo.git, ssh://git@host:22/group/repo.git
        path = url.split("://", 1)[1].partition("/")[2]
    elif ":" in url:  # git@host:group/repo.git
        path = url.split(":", 1)[1]
    else:  # a local path
        path = url
    alias = path.strip("/").removesuffix(".git").strip("/")
    if not alias:
        raise LoomError(f"cannot take an alias from the origin URL {url!r}; give --vault-path ALIAS")
    return alias


def vault_create(vault_path: str | None, database_path: str | None, password_env: str | None,
                 keyfile_env: str | None, force: bool, as_json: bool) -> int:
    from loomrun.commands.secrets_config import add_alias, declared
    from workers.secrets.errors import SecretError
    from workers.secrets.keepass import create_vault

    password, keyfile = _credentials(password_env, keyfile_env)
    known = _Aliases()
    root = known.root
    alias = vault_path or origin_alias(root)
    if database_path is not None:
        path = os.path.abspath(database_path)
    else:
        try:
            path = known.source(alias).path  # an alias already configured keeps its database path
        except SecretError:
            path = str(root / ".loom" / "keepass" / f"{env_key(alias)}.kdbx")
    if os.path.exists(path) and not force:
        raise LoomError(f"{_shown(path, root)} already exists; --force replaces it (and every entry in it)")
    try:
        create_vault(path, password, keyfile)
    except SecretError as exc:
        raise _fail(exc) from None
    config = root / ".loom" / "config.yml"
    added = not declared(config, alias)
    if added:
        fields = {"path": os.path.relpath(path, config.parent)}
        fields.update({k: v for k, v in (("passwordEnv", password_env), ("keyfileEnv", keyfile_env)) if v})
        add_alias(config, alias, fields)
    shown = _shown(path, root)
    return _out(as_json, {"alias": alias, "path": shown, "config_updated": added},
                [f"vault created: alias={alias} path={shown}"])


def vault_update(alias: str, password_env: str | None, keyfile_env: str | None, as_json: bool) -> int:
    from workers.secrets.errors import SecretError

    password, keyfile = _credentials(password_env, keyfile_env)
    known = _Aliases()
    vault = known.open(alias)
    vault.set_credentials(password, keyfile)
    try:
        vault.save()
    except (OSError, SecretError) as exc:
        raise LoomError(f"cannot save {vault.path}: {getattr(exc, 'strerror', None) or exc}") from None
    src = known.source(alias)
    now = [k for k, v in (("password", password), ("keyfile", keyfile)) if v is not None]
    if src.credentials != now:
        print(f"warning: alias {alias} is configured with credentials={','.join(src.credentials)}, the database "
              f"now needs {','.join(now)}: set passwordEnv/keyfileEnv for it", file=sys.stderr)
    shown = _shown(vault.path, known.root)
    return _out(as_json, {"alias": alias, "path": shown, "credentials": now},
                [f"vault updated: alias={alias} path={shown}"])


def vault_list(as_json: bool) -> int:
    from workers.secrets.aliases import environment_aliases
    from workers.secrets.errors import SecretError

    known = _Aliases()
    names = sorted(known.configured)
    keys = {env_key(name) for name in names}
    names += [key for key in environment_aliases(os.environ) if key not in keys]
    rows: list[dict[str, Any]] = []
    for name in names:
        try:
            src = known.source(name)
            rows.append({"alias": name, "path": _shown(src.path, known.root), "credentials": src.credentials})
        except SecretError as exc:
            rows.append({"alias": name, "path": None, "credentials": [], "error": exc.message})
    if not rows and not as_json:
        print("no keepass aliases configured", file=sys.stderr)
    return _out(as_json, rows, [f"alias={r['alias']} path={r['path'] or '-'} "
                                f"credentials={','.join(r['credentials']) or 'none'}" for r in rows])


def item_set(alias: str, item_path: str, field: str, value_env: str, update: bool, as_json: bool) -> int:
    from workers.secrets.errors import SecretError

    value = _from_env(value_env, "--value-from-env")
    vault = _Aliases().open(alias)
    try:
        vault.set_field(item_path, field, value, create=not update)
        vault.save()
    except SecretError as exc:
        raise _fail(exc) from None
    verb = "updated" if update else "created"
    return _out(as_json, {"alias": alias, "item": item_path, "field": field, verb: True},
                [f"item field {verb}: alias={alias} item={item_path} field={field}"])


def item_list(alias: str, as_json: bool) -> int:
    items = _Aliases().open(alias).items()
    return _items_out(items, as_json)


def _items_out(items: list[tuple[str, list[str]]], as_json: bool) -> int:
    return _out(as_json, [{"item": path, "fields": fields} for path, fields in items],
                [f"{path}  {','.join(fields)}".rstrip() for path, fields in items])


# -- 1Password -------------------------------------------------------------------------------------

def _op_client() -> Any:
    from loomrun.config import load_runtime_config
    from workers.secrets.errors import PROVIDER_UNAVAILABLE, SecretError
    from workers.secrets.op import connect

    root = _repo_root()
    try:
        cfg = load_runtime_config(root)
    except LoomError as exc:  # a bad config is "misconfigured" (spec §7.2), as `loom secrets keepass` says
        raise _fail(SecretError(PROVIDER_UNAVAILABLE, f"runtime config: {exc.message}")) from None
    try:
        return connect(cfg.op_token_env, os.environ)
    except SecretError as exc:
        raise _fail(exc) from None


def _op_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from workers.secrets.errors import SecretError

    client = _op_client()
    try:
        return fn(client, *args, **kwargs)
    except SecretError as exc:
        raise _fail(exc) from None
    finally:
        client.close()


def op_vault_list(as_json: bool) -> int:
    vaults = _op_call(lambda client: client.vaults())
    return _out(as_json, [{"name": v.title, "id": v.id} for v in vaults],
                [f"name={v.title} id={v.id}" for v in vaults])


def op_item_create(vault: str, item_path: str, field: str, value_env: str, as_json: bool) -> int:
    from workers.secrets.op import put_field

    value = _from_env(value_env, "--value-from-env")
    _op_call(put_field, vault, item_path, field, value, update=False)
    return _out(as_json, {"vault": vault, "item": item_path, "field": field, "created": True},
                [f"item field created: vault={vault} item={item_path} field={field}"])


def op_item_list(vault: str, as_json: bool) -> int:
    from workers.secrets.op import list_items

    return _items_out(_op_call(list_items, vault), as_json)
