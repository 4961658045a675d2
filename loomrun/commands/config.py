"""`loom config init | show` (spec §1.4, §8). Runs in the `loom` process.

`init` writes a commented starter file (never over an existing one without --force); `show` prints
the effective runtime config as YAML on stdout, every field followed by the layer it came from.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from loomrun.config import (
    ALIASES,
    FIELD_CACHE_SIZE,
    FIELD_JOBSERVER,
    FIELD_MAX_AGE,
    FIELD_MOUNT,
    FIELD_OP,
    FIELD_RAY,
    FIELD_RUNS,
    RuntimeConfig,
    load_runtime_config,
    project_config_path,
    user_config_path,
)
from loomrun.errors import LoomError

STARTER = """\
# loom runtime config (https://loom-build.com). Layers, low to high, field by field:
#   ~/.config/loom/config.yml, .loom/config.yml, the environment, the command line.
# Unknown keys are errors; values are checked once the layers are merged.
# `loom config show` prints the effective value of every field and the layer it came from.
runtime:
  docker:
    # ephemeral_volume (default): Docker jobs get a fresh volume seeded with a copy of the workspace.
    # bind_mount: the workspace folder itself is mounted; changes are visible on the host at once.
    # Also: $LOOM_DOCKER_WORKSPACE_MOUNT, --docker-workspace-mount.
    workspaceMount: ephemeral_volume
  # Logs, receipts and snapshots of finished runs beyond the newest `runs`, or older than `maxAge`,
  # are removed at the start of a run and by `loom gc`. A run still going is never touched.
  retention: {runs: 50, maxAge: 14d}
  # After a save pushes the cache store past this, the least recently restored entries go.
  cache: {maxSize: 5g}
  # loom is a GNU make jobserver for its jobs: "on", "off", or "fifo:/absolute/path" for one pool
  # shared by every loom run on this host. Also: $LOOM_JOBSERVER.
  jobserver: "on"
# remote:
#   ray: {address: "10.0.0.5:6379"}   # loom run --remote; also $RAY_ADDRESS
# providers:
#   keepass:
#     aliases:
#       # path is relative to the file that declares it. Layers merge per alias and per field:
#       # a repo file may set only keyfileEnv and keep path and passwordEnv from the user file.
#       team/app: {path: vaults/team-app.kdbx, passwordEnv: TEAM_APP_PASSWORD, keyfileEnv: TEAM_APP_KEYFILE}
#   op:
#     serviceAccountTokenEnv: OP_SERVICE_ACCOUNT_TOKEN   # the variable holding the service-account token
"""


def _repo_root() -> Path:
    from loomrun.repo import discover_repo_root

    try:
        return discover_repo_root()
    except LoomError:
        return Path.cwd()  # outside a repo: the project layer is simply the current folder's


def init(user: bool, force: bool) -> int:
    path = user_config_path() if user else project_config_path(_repo_root())
    if path.exists() and not force:
        raise LoomError(f"{path} already exists; use --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(STARTER, encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def show() -> int:
    cfg = load_runtime_config(_repo_root())
    sys.stdout.write("\n".join(render(cfg)) + "\n")
    return 0


def render(cfg: RuntimeConfig) -> list[str]:
    src = cfg.sources

    def leaf(indent: int, key: str, value: object, field: str) -> str:
        return f"{'  ' * indent}{key}: {json.dumps(value)}  # from {src.get(field, 'default')}"

    lines = ["runtime:", "  docker:", f"    workspaceMount: {cfg.docker_workspace_mount}  # from {src[FIELD_MOUNT]}",
             "  retention:", leaf(2, "runs", cfg.retention_runs, FIELD_RUNS),
             leaf(2, "maxAge", _duration(cfg.retention_max_age_s), FIELD_MAX_AGE),
             "  cache:", leaf(2, "maxSize", _size(cfg.cache_max_size_bytes), FIELD_CACHE_SIZE),
             leaf(1, "jobserver", cfg.jobserver, FIELD_JOBSERVER),
             "remote:", "  ray:", leaf(2, "address", cfg.ray_address, FIELD_RAY),
             "providers:", "  keepass:"]
    if not cfg.keepass_aliases:
        lines.append("    aliases: {}")
    else:
        lines.append("    aliases:")
    for name, alias in cfg.keepass_aliases.items():
        lines.append(f"      {json.dumps(name)}:")
        for key, value in (("path", alias.path), ("passwordEnv", alias.password_env),
                           ("keyfileEnv", alias.keyfile_env)):
            if value is not None:
                lines.append(leaf(4, key, value, f"{ALIASES}.{name}.{key}"))
    lines += ["  op:", leaf(2, "serviceAccountTokenEnv", cfg.op_token_env, FIELD_OP)]
    return lines


def _duration(seconds: float) -> str | float:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds == int(seconds) and int(seconds) % size == 0:
            return f"{int(seconds) // size}{unit}"
    return seconds


def _size(size: int) -> str:
    for unit, factor in (("t", 1 << 40), ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
