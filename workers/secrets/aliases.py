"""Where a KeePass alias's database is and how to unlock it (spec §7.1, §8). Runs in the secrets
broker and in `loom secrets keepass`; reads the runtime config and the environment, writes nothing.

The merged config layers (`loomrun.config`) give each alias a `path` (absolute: made relative to
the file that declared it) and the *names* of the variables holding the master password and the
keyfile path. `LOOM_KEEPASS_DB_<KEY>_PATH`, `_PASSWORD_ENV` and `_KEYFILE_ENV` overlay them field
by field, at run time; a relative path from those variables is relative to the current folder of
`loom`, as a path typed in a shell would be. An alias known only through the variables works too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from loomrun.workflow.secret_refs import env_key
from workers.secrets.errors import PROVIDER_UNAVAILABLE, SecretError

PREFIX = "LOOM_KEEPASS_DB_"


class VaultSource(NamedTuple):
    alias: str
    path: str  # absolute
    password_env: str | None
    keyfile_env: str | None
    origin: str  # where `path` came from, for error lines

    @property
    def credentials(self) -> list[str]:
        return [kind for kind, var in (("password", self.password_env), ("keyfile", self.keyfile_env)) if var]


def overlay_vars(alias: str) -> tuple[str, str, str]:
    key = env_key(alias)
    return f"{PREFIX}{key}_PATH", f"{PREFIX}{key}_PASSWORD_ENV", f"{PREFIX}{key}_KEYFILE_ENV"


def configured_aliases(repo_root: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(alias name -> `KeepassAlias`, field -> layer) from the merged config layers."""
    from loomrun.config import load_runtime_config
    from loomrun.errors import LoomError

    try:
        cfg = load_runtime_config(repo_root)
    except LoomError as exc:
        raise SecretError(PROVIDER_UNAVAILABLE, f"runtime config: {exc.message}") from None
    return dict(cfg.keepass_aliases), dict(cfg.sources)


def source(alias: str, configured: Mapping[str, Any], layers: Mapping[str, str],
           environ: Mapping[str, str], cwd: str) -> VaultSource:
    """The alias's database and credential variables, or SECRETS_PROVIDER_UNAVAILABLE saying what to set."""
    path_var, password_var, keyfile_var = overlay_vars(alias)
    conf = configured.get(alias)
    path, origin = environ.get(path_var), path_var
    if path:
        path = os.path.join(cwd, path)
    elif conf is not None and getattr(conf, "path", None):
        path = str(conf.path)
        origin = layers.get(f"providers.keepass.aliases.{alias}.path") or layers.get(
            f"providers.keepass.aliases.{alias}") or "the runtime config"
    else:
        raise SecretError(PROVIDER_UNAVAILABLE, f'keepass alias "{alias}" is not configured: set {path_var} or '
                                                f'providers.keepass.aliases."{alias}".path in .loom/config.yml')
    password_env = environ.get(password_var) or (getattr(conf, "password_env", None) if conf else None)
    keyfile_env = environ.get(keyfile_var) or (getattr(conf, "keyfile_env", None) if conf else None)
    if not password_env and not keyfile_env:
        raise SecretError(PROVIDER_UNAVAILABLE, f'keepass alias "{alias}" names no credentials: set passwordEnv '
                                                f"and/or keyfileEnv for it (or {password_var} / {keyfile_var})")
    return VaultSource(alias, os.path.normpath(path), password_env, keyfile_env, origin)


def unlock(src: VaultSource, environ: Mapping[str, str], cwd: str) -> tuple[str | None, str | None]:
    """(master password, keyfile path) from the variables the alias names; the database must exist."""
    what = _not_a_database(src.path)
    if what:
        raise SecretError(PROVIDER_UNAVAILABLE, f'keepass alias "{src.alias}": database {src.path} {what} '
                                                f"(path from {src.origin})")
    password = keyfile = None
    if src.password_env:
        password = environ.get(src.password_env)
        if password is None:
            raise SecretError(PROVIDER_UNAVAILABLE, f'keepass alias "{src.alias}": its master password is read '
                                                    f"from ${src.password_env}, which is not set")
    if src.keyfile_env:
        keyfile = environ.get(src.keyfile_env)
        if not keyfile:
            raise SecretError(PROVIDER_UNAVAILABLE, f'keepass alias "{src.alias}": its keyfile path is read '
                                                    f"from ${src.keyfile_env}, which is not set")
        keyfile = os.path.join(cwd, keyfile)
        if not os.path.isfile(keyfile):
            raise SecretError(PROVIDER_UNAVAILABLE, f'keepass alias "{src.alias}": keyfile {keyfile} '
                                                    f"(from ${src.keyfile_env}) does not exist")
    return password, keyfile


def environment_aliases(environ: Mapping[str, str]) -> list[str]:
    """KEYs of aliases declared only through `LOOM_KEEPASS_DB_<KEY>_PATH`."""
    return sorted(name[len(PREFIX):-len("_PATH")] for name, value in environ.items()
                  if name.startswith(PREFIX) and name.endswith("_PATH") and value
                  and len(name) > len(PREFIX) + len("_PATH"))


def _not_a_database(path: str) -> str | None:
    """Why `path` cannot be a database file, said so that the fix is plain; None when it may be one.
    A folder on the way that loom may not search is not "does not exist" (os.path.exists says so)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return (f"cannot be reached: {exc.strerror} (the user running loom must be able to open every folder "
                "on the way)")
    if not stat.S_ISREG(st.st_mode):
        return "is not a file: point the alias's path at the .kdbx file itself"
    return None
