"""`loom config init | show` (spec §1.4, §8). Runs in the `loom` process.

`init` writes a commented starter file (never over an existing one without --force); `show` prints
the effective runtime config as YAML on stdout, each value followed by the layer it came from.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from loomrun.config import load_runtime_config, project_config_path, user_config_path
from loomrun.errors import LoomError

STARTER = """\
# loom runtime config (https://loom-build.com). Layers, low to high, field by field:
#   ~/.config/loom/config.yml, .loom/config.yml, $LOOM_DOCKER_WORKSPACE_MOUNT, --docker-workspace-mount.
# Unknown keys are errors.
runtime:
  docker:
    # ephemeral_volume (default): Docker jobs get a fresh volume seeded with a copy of the workspace.
    # bind_mount: the workspace folder itself is mounted; changes are visible on the host at once.
    workspaceMount: ephemeral_volume
# providers:
#   keepass:
#     aliases:
#       # path is relative to this file
#       team/app: {path: vaults/team-app.kdbx, passwordEnv: TEAM_APP_PASSWORD, keyfileEnv: TEAM_APP_KEYFILE}
#   op:
#     serviceAccountTokenEnv: LOOM_OP_TOKEN
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
    src = cfg.sources
    lines = ["runtime:", "  docker:",
             f"    workspaceMount: {cfg.docker_workspace_mount}  # from {src['runtime.docker.workspaceMount']}"]
    if cfg.keepass_aliases or cfg.op_token_env:
        lines.append("providers:")
    if cfg.keepass_aliases:
        lines += ["  keepass:", "    aliases:"]
        for name, alias in cfg.keepass_aliases.items():
            spec = {"path": alias.path, "passwordEnv": alias.password_env, "keyfileEnv": alias.keyfile_env}
            shown = ", ".join(f"{k}: {json.dumps(v)}" for k, v in spec.items() if v is not None)
            lines.append(f"      {json.dumps(name)}: {{{shown}}}  # from {src[f'providers.keepass.aliases.{name}']}")
    if cfg.op_token_env:
        lines += ["  op:", f"    serviceAccountTokenEnv: {json.dumps(cfg.op_token_env)}"
                           f"  # from {src['providers.op.serviceAccountTokenEnv']}"]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
