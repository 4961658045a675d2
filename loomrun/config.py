"""Runtime config (spec §8). Runs in the `loom` process; reads files, writes nothing.

Layers, low to high, field by field: built-in defaults, `~/.config/loom/config.yml` (under `$HOME`),
`.loom/config.yml`, the environment (`LOOM_DOCKER_WORKSPACE_MOUNT`, `LOOM_JOBSERVER`, `RAY_ADDRESS`),
the command-line flag. Keepass aliases merge per alias and per field: a repo file that sets only
`keyfileEnv` for an alias keeps the user file's `path` and `passwordEnv`. A keepass `path` is
relative to the file that declared it.

Unknown keys are errors in the layer that has them; values are checked on the merged result only
(a bad value a higher layer replaces is no error), each error naming the layer its value came from.
The `LOOM_KEEPASS_DB_<KEY>_*` overlays of spec §7.1 are applied where secrets are resolved, not
here (`alias_env_key` gives KEY).

Every `loom run` reads this, so it is cheap: NamedTuples, and pyyaml is imported only when a
config file exists.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from loomrun.errors import LoomError
from loomrun.userfiles import read_regular
from loomrun.workflow.durations import parse_duration, parse_memory
from loomrun.workflow.secret_refs import env_key

MOUNTS = ("bind_mount", "ephemeral_volume")
DEFAULT_MOUNT = "ephemeral_volume"
DEFAULT_OP_TOKEN_ENV = "OP_SERVICE_ACCOUNT_TOKEN"
ENV_MOUNT = "LOOM_DOCKER_WORKSPACE_MOUNT"
ENV_JOBSERVER = "LOOM_JOBSERVER"
ENV_RAY = "RAY_ADDRESS"
FIELD_MOUNT = "runtime.docker.workspaceMount"
FIELD_RUNS = "runtime.retention.runs"
FIELD_MAX_AGE = "runtime.retention.maxAge"
FIELD_CACHE_SIZE = "runtime.cache.maxSize"
FIELD_JOBSERVER = "runtime.jobserver"
FIELD_RAY = "remote.ray.address"
FIELD_OP = "providers.op.serviceAccountTokenEnv"
ALIASES = "providers.keepass.aliases"
_ALIAS_KEYS = ("path", "passwordEnv", "keyfileEnv")
MAX_CONFIG_BYTES = 1 << 20
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT64_MAX = (1 << 63) - 1

# field -> its default, as a config file would spell it
DEFAULTS: dict[str, object] = {
    FIELD_MOUNT: DEFAULT_MOUNT, FIELD_RUNS: 50, FIELD_MAX_AGE: "14d", FIELD_CACHE_SIZE: "5g",
    FIELD_JOBSERVER: "on", FIELD_RAY: None, FIELD_OP: DEFAULT_OP_TOKEN_ENV,
}
# Environment variables that are a layer of their own, and the field each sets.
ENV_FIELDS = {ENV_MOUNT: FIELD_MOUNT, ENV_JOBSERVER: FIELD_JOBSERVER, ENV_RAY: FIELD_RAY}


class KeepassAlias(NamedTuple):
    name: str
    path: str  # absolute; "" when only the LOOM_KEEPASS_DB_<KEY>_PATH overlay gives it
    password_env: str | None = None
    keyfile_env: str | None = None


class RuntimeConfig(NamedTuple):
    docker_workspace_mount: str = DEFAULT_MOUNT
    keepass_aliases: dict[str, KeepassAlias] = {}  # never mutated: shared defaults are safe
    op_token_env: str | None = DEFAULT_OP_TOKEN_ENV
    sources: dict[str, str] = {}  # field (dotted) -> the layer it came from
    retention_runs: int = 50
    retention_max_age_s: float = 14 * 86400.0
    cache_max_size_bytes: int = 5 << 30
    jobserver: str = "on"  # on | off | fifo:/absolute/path
    ray_address: str | None = None


class _Value(NamedTuple):
    value: Any
    layer: str  # as `sources` shows it: "default", a file path, "env NAME", "flag --name"
    where: str  # as an error names it: the file path, "environment variable NAME", "flag --name"
    folder: Path | None = None  # a file layer's folder (keepass paths are relative to it)


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".config" / "loom" / "config.yml"


def project_config_path(repo_root: Path) -> Path:
    return repo_root / ".loom" / "config.yml"


def alias_env_key(alias: str) -> str:
    """KEY of the `LOOM_KEEPASS_DB_<KEY>_*` overlays: the alias upper-cased, every character that is
    not an ASCII letter or digit made `_` (`team/app` -> `TEAM_APP`); the secrets code uses the same."""
    return env_key(alias)


def load_runtime_config(repo_root: Path, flag_mount: str | None = None,
                        env: Mapping[str, str] | None = None) -> RuntimeConfig:
    env = os.environ if env is None else env
    fields: dict[str, _Value] = {name: _Value(value, "default", "the default") for name, value in DEFAULTS.items()}
    aliases: dict[str, dict[str, _Value]] = {}
    sources: dict[str, str] = {}
    for path in (user_config_path(env), project_config_path(repo_root)):
        layer = _read_layer(path)
        if layer is not None:
            _take_layer(layer, _Value(None, str(path), str(path), path.parent), fields, aliases, sources)
    for name, field in ENV_FIELDS.items():
        if env.get(name):
            fields[field] = _Value(env[name], f"env {name}", f"environment variable {name}")
    if flag_mount is not None:
        fields[FIELD_MOUNT] = _Value(flag_mount, "flag --docker-workspace-mount", "flag --docker-workspace-mount")
    sources.update({name: v.layer for name, v in fields.items()})
    return _merged(fields, aliases, sources, env)


# ---- one layer ----------------------------------------------------------------------------------

# The shape of a config file: a dict is a nested section, None a leaf, "aliases" a free mapping.
_SCHEMA: dict[str, Any] = {
    "runtime": {"docker": {"workspaceMount": None}, "retention": {"runs": None, "maxAge": None},
                "cache": {"maxSize": None}, "jobserver": None},
    "remote": {"ray": {"address": None}},
    "providers": {"keepass": {"aliases": "aliases"}, "op": {"serviceAccountTokenEnv": None}},
}


def _read_layer(path: Path) -> dict[str, Any] | None:
    """The file's mapping (its keys checked), or None when the file is absent."""
    try:
        data = read_regular(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LoomError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise LoomError(f"{path}: a config file is a few lines; this one is over {MAX_CONFIG_BYTES >> 20} MiB")
    import yaml  # only when a file exists: a run without config files never imports it here

    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise LoomError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise LoomError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', None) or 'parse error'}") from None
    except RecursionError:
        raise LoomError(f"{path}: nested too deeply") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise LoomError(f"{path}: expected a mapping at the top of the file")
    _check_keys(doc, _SCHEMA, str(path), "")
    return doc


def _check_keys(data: Any, schema: Any, path: str, prefix: str) -> None:
    if schema is None:
        return
    if not isinstance(data, dict):
        raise LoomError(f"{path}: expected a mapping for \"{prefix.rstrip('.')}\"")
    if schema == "aliases":
        for name, spec in data.items():
            if not isinstance(spec, dict):
                raise LoomError(f"{path}: expected a mapping for keepass alias \"{name}\"")
            for key in spec:
                if key not in _ALIAS_KEYS:
                    raise LoomError(f"{path}: unknown key \"{prefix}{name}.{key}\"")
        return
    for key, value in data.items():
        if key not in schema:
            raise LoomError(f"{path}: unknown key \"{prefix}{key}\"")
        if value is not None:
            _check_keys(value, schema[key], path, f"{prefix}{key}.")


def _take_layer(doc: dict[str, Any], layer: _Value, fields: dict[str, _Value],
                aliases: dict[str, dict[str, _Value]], sources: dict[str, str]) -> None:
    """Every value the file sets, over what lower layers set (a null is "not set")."""
    for name in DEFAULTS:
        value = _get(doc, *name.split("."))
        if value is not None:
            fields[name] = layer._replace(value=value)
    for alias, spec in (_get(doc, "providers", "keepass", "aliases") or {}).items():
        mine = aliases.setdefault(str(alias), {})
        sources[f"{ALIASES}.{alias}"] = layer.layer  # the alias as a whole: the last layer that named it
        for key, value in spec.items():
            if value is not None:
                mine[key] = layer._replace(value=value)
                sources[f"{ALIASES}.{alias}.{key}"] = layer.layer


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or data.get(key) is None:
            return None
        data = data[key]
    return data


# ---- the merged result --------------------------------------------------------------------------

def _merged(fields: dict[str, _Value], aliases: dict[str, dict[str, _Value]], sources: dict[str, str],
            env: Mapping[str, str]) -> RuntimeConfig:
    return RuntimeConfig(
        docker_workspace_mount=_mount(fields[FIELD_MOUNT]),
        keepass_aliases={name: _alias(name, spec, env) for name, spec in aliases.items()},
        op_token_env=_env_name(fields[FIELD_OP], FIELD_OP),
        sources=sources,
        retention_runs=_runs(fields[FIELD_RUNS]),
        retention_max_age_s=_max_age(fields[FIELD_MAX_AGE]),
        cache_max_size_bytes=_size(fields[FIELD_CACHE_SIZE]),
        jobserver=_jobserver(fields[FIELD_JOBSERVER]),
        ray_address=_ray(fields[FIELD_RAY]),
    )


def _mount(v: _Value) -> str:
    if v.value not in MOUNTS:
        raise LoomError(f"invalid workspaceMount {v.value!r} from {v.where}; expected bind_mount or ephemeral_volume")
    return str(v.value)


def _string(v: _Value, name: str) -> str:
    if not isinstance(v.value, str) or not v.value.strip():
        raise LoomError(f'{v.where}: expected a non-empty string for "{name}"')
    return v.value


def _env_name(v: _Value, name: str) -> str:
    value = _string(v, name)
    if not _ENV_NAME.fullmatch(value):
        raise LoomError(f'{v.where}: "{name}" names an environment variable; {value!r} is not a variable name')
    return value


def _runs(v: _Value) -> int:
    if isinstance(v.value, bool) or not isinstance(v.value, int) or not 1 <= v.value <= 1_000_000:
        raise LoomError(f'{v.where}: "{FIELD_RUNS}" must be a whole number of runs from 1 to 1000000, '
                        f"not {v.value!r}")
    return v.value


def _max_age(v: _Value) -> float:
    try:
        seconds = parse_duration(v.value)
    except ValueError as exc:
        raise LoomError(f'{v.where}: invalid "{FIELD_MAX_AGE}": {exc}') from None
    if seconds == math.inf:
        raise LoomError(f'{v.where}: invalid "{FIELD_MAX_AGE}": {v.value!r} is too long')
    return seconds


def _size(v: _Value) -> int:
    try:
        size = parse_memory(v.value)
    except ValueError as exc:
        raise LoomError(f'{v.where}: invalid "{FIELD_CACHE_SIZE}": {exc}') from None
    if size > _INT64_MAX:
        raise LoomError(f'{v.where}: invalid "{FIELD_CACHE_SIZE}": {v.value!r} is too large')
    return size


def _jobserver(v: _Value) -> str:
    # YAML 1.1 reads an unquoted `on` / `off` as a boolean: take it as meant.
    value = ("on" if v.value else "off") if isinstance(v.value, bool) else v.value
    if value in ("on", "off"):
        return str(value)
    if isinstance(value, str) and value.startswith("fifo:") and value[5:].startswith("/"):
        return value
    raise LoomError(f'{v.where}: invalid "{FIELD_JOBSERVER}" {value!r}; expected "on", "off" or '
                    '"fifo:/absolute/path"')


def _ray(v: _Value) -> str | None:
    if v.value is None:
        return None
    value = _string(v, FIELD_RAY)
    if any(c.isspace() for c in value):
        raise LoomError(f'{v.where}: invalid "{FIELD_RAY}" {value!r}; expected an address like 10.0.0.5:6379')
    if not v.layer.startswith("env "):  # RAY_ADDRESS is Ray's own: refused only when a --remote run uses it
        refuse_ray_client(value, f'"{FIELD_RAY}" in {v.where}')
    return value


def refuse_ray_client(address: str, where: str) -> None:
    """A `ray://` (Ray Client) address, in one line: loom joins the cluster as a driver on one of
    its nodes (the gateway), which a Ray Client connection from outside the cluster is not."""
    if address.startswith("ray://"):
        raise LoomError(f"cannot use {address} ({where}): Ray Client addresses are not supported; run loom "
                        "on a node of the cluster and give the head's host:port (e.g. 10.0.0.5:6379)")


def _alias(name: str, spec: dict[str, _Value], env: Mapping[str, str]) -> KeepassAlias:
    label = f'{ALIASES}."{name}"'
    if "path" not in spec:
        if env.get(f"LOOM_KEEPASS_DB_{alias_env_key(name)}_PATH"):
            path = ""  # the run-time overlay gives it (applied where secrets are resolved)
        else:
            raise LoomError(f'keepass alias "{name}" has no path in any config layer; set {label}.path '
                            f"(or LOOM_KEEPASS_DB_{alias_env_key(name)}_PATH)")
    else:
        where = spec["path"]
        raw = _string(where, f"{label}.path")
        path = str(Path(raw) if Path(raw).is_absolute() or where.folder is None else where.folder / raw)
    password = spec.get("passwordEnv")
    keyfile = spec.get("keyfileEnv")
    return KeepassAlias(
        name=name, path=path,
        password_env=_env_name(password, f"{label}.passwordEnv") if password is not None else None,
        keyfile_env=_env_name(keyfile, f"{label}.keyfileEnv") if keyfile is not None else None,
    )
