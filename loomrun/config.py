"""Runtime config (spec §8). Runs in the `loom` process; reads files, writes nothing.

Layers, low to high, field by field: built-in defaults, `~/.config/loom/config.yml` (under `$HOME`),
`.loom/config.yml`, the environment (`LOOM_DOCKER_WORKSPACE_MOUNT`), the command-line flag.
Unknown keys and invalid values are errors naming the layer. Keepass aliases merge alias by alias;
a keepass `path` is made absolute relative to the file that declared it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loomrun.errors import LoomError

MOUNTS = ("bind_mount", "ephemeral_volume")
DEFAULT_MOUNT = "ephemeral_volume"
ENV_MOUNT = "LOOM_DOCKER_WORKSPACE_MOUNT"
FIELD_MOUNT = "runtime.docker.workspaceMount"
FIELD_OP = "providers.op.serviceAccountTokenEnv"
_ALIAS_KEYS = ("path", "passwordEnv", "keyfileEnv")


@dataclass(frozen=True)
class KeepassAlias:
    name: str
    path: str  # absolute
    password_env: str | None = None
    keyfile_env: str | None = None


@dataclass(frozen=True)
class RuntimeConfig:
    docker_workspace_mount: str = DEFAULT_MOUNT
    keepass_aliases: dict[str, KeepassAlias] = field(default_factory=dict)
    op_token_env: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  # field (dotted) -> layer it came from


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".config" / "loom" / "config.yml"


def project_config_path(repo_root: Path) -> Path:
    return repo_root / ".loom" / "config.yml"


def load_runtime_config(repo_root: Path, flag_mount: str | None = None,
                        env: Mapping[str, str] | None = None) -> RuntimeConfig:
    env = os.environ if env is None else env
    mount, op_env = DEFAULT_MOUNT, None
    aliases: dict[str, KeepassAlias] = {}
    sources = {FIELD_MOUNT: "default"}
    for path in (user_config_path(env), project_config_path(repo_root)):
        layer = _read_layer(path)
        if layer is None:
            continue
        if (value := _get(layer, "runtime", "docker", "workspaceMount")) is not None:
            mount = _mount(value, str(path))
            sources[FIELD_MOUNT] = str(path)
        if (value := _get(layer, "providers", "op", "serviceAccountTokenEnv")) is not None:
            op_env = _string(value, str(path), FIELD_OP)
            sources[FIELD_OP] = str(path)
        for name, spec in (_get(layer, "providers", "keepass", "aliases") or {}).items():
            aliases[str(name)] = _alias(str(name), spec, path)
            sources[f"providers.keepass.aliases.{name}"] = str(path)
    if env.get(ENV_MOUNT):
        mount = _mount(env[ENV_MOUNT], f"environment variable {ENV_MOUNT}")
        sources[FIELD_MOUNT] = f"env {ENV_MOUNT}"
    if flag_mount is not None:
        mount = _mount(flag_mount, "flag --docker-workspace-mount")
        sources[FIELD_MOUNT] = "flag --docker-workspace-mount"
    return RuntimeConfig(mount, aliases, op_env, sources)


def _read_layer(path: Path) -> dict[str, Any] | None:
    """The file's mapping (validated: unknown keys are errors), or None when the file is absent."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LoomError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise LoomError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', None) or 'parse error'}") from None
    except RecursionError:
        raise LoomError(f"{path}: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LoomError(f"{path}: expected a mapping at the top of the file")
    _check_keys(data, _SCHEMA, str(path), "")
    return data


# The shape of a config file: a dict is a nested section, None a leaf, "aliases" a free mapping.
_SCHEMA: dict[str, Any] = {
    "runtime": {"docker": {"workspaceMount": None}},
    "providers": {"keepass": {"aliases": "aliases"}, "op": {"serviceAccountTokenEnv": None}},
}


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


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or data.get(key) is None:
            return None
        data = data[key]
    return data


def _mount(value: Any, layer: str) -> str:
    if value not in MOUNTS:
        raise LoomError(f"invalid workspaceMount {value!r} from {layer}; expected bind_mount or ephemeral_volume")
    return str(value)


def _string(value: Any, layer: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise LoomError(f"{layer}: expected a non-empty string for \"{name}\"")
    return value


def _alias(name: str, spec: dict[str, Any], declared_in: Path) -> KeepassAlias:
    where = str(declared_in)
    raw = _string(spec.get("path"), where, f"providers.keepass.aliases.{name}.path")
    path = Path(raw) if Path(raw).is_absolute() else declared_in.parent / raw
    password = spec.get("passwordEnv")
    keyfile = spec.get("keyfileEnv")
    return KeepassAlias(
        name=name, path=str(path),
        password_env=_string(password, where, f"aliases.{name}.passwordEnv") if password is not None else None,
        keyfile_env=_string(keyfile, where, f"aliases.{name}.keyfileEnv") if keyfile is not None else None,
    )
