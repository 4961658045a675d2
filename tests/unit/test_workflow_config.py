"""Runtime config layers (spec §8): user file, project file, env, flag; field by field. Pure file reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from loomrun.config import load_runtime_config
from loomrun.errors import LoomError


def setup(tmp_path: Path, user: str | None = None, project: str | None = None) -> tuple[Path, dict[str, str]]:
    home, repo = tmp_path / "home", tmp_path / "repo"
    (repo / ".loom").mkdir(parents=True)
    if user is not None:
        (home / ".config" / "loom").mkdir(parents=True)
        (home / ".config" / "loom" / "config.yml").write_text(user)
    if project is not None:
        (repo / ".loom" / "config.yml").write_text(project)
    return repo, {"HOME": str(home)}


def test_defaults(tmp_path: Path) -> None:
    repo, env = setup(tmp_path)
    cfg = load_runtime_config(repo, env=env)
    assert cfg.docker_workspace_mount == "ephemeral_volume"
    assert cfg.sources["runtime.docker.workspaceMount"] == "default"


def test_layers_field_by_field(tmp_path: Path) -> None:
    user = ("runtime: {docker: {workspaceMount: bind_mount}}\nproviders:\n  op: {serviceAccountTokenEnv: U}\n"
            "  keepass:\n    aliases:\n      team/app: {path: v.kdbx, passwordEnv: P}\n")
    repo, env = setup(tmp_path, user, "providers: {op: {serviceAccountTokenEnv: PROJ}}\n")
    cfg = load_runtime_config(repo, env=env)
    assert cfg.docker_workspace_mount == "bind_mount"
    assert cfg.sources["runtime.docker.workspaceMount"].endswith("home/.config/loom/config.yml")
    assert cfg.op_token_env == "PROJ"
    assert cfg.keepass_aliases["team/app"].path == str(tmp_path / "home" / ".config" / "loom" / "v.kdbx")
    env["LOOM_DOCKER_WORKSPACE_MOUNT"] = "ephemeral_volume"
    assert load_runtime_config(repo, env=env).sources["runtime.docker.workspaceMount"] == \
        "env LOOM_DOCKER_WORKSPACE_MOUNT"
    flagged = load_runtime_config(repo, "bind_mount", env=env)
    assert flagged.docker_workspace_mount == "bind_mount"
    assert flagged.sources["runtime.docker.workspaceMount"] == "flag --docker-workspace-mount"


@pytest.mark.parametrize(("user", "project", "env_value", "needle"), [
    ("runtime: {docker: {workspaceMount: nfs}}\n", None, None, "home/.config/loom/config.yml"),
    (None, "runtime: {docker: {workspaceMount: 3}}\n", None, ".loom/config.yml"),
    (None, None, "tmpfs", "environment variable LOOM_DOCKER_WORKSPACE_MOUNT"),
    (None, "runtime: {dokker: {}}\n", None, 'config.yml: unknown key "runtime.dokker"'),
    (None, "providers: {keepass: {aliases: {a: {path: x, colour: red}}}}\n", None,
     'unknown key "providers.keepass.aliases.a.colour"'),
    (None, "- a\n", None, "expected a mapping"),
    (None, "a: [\n", None, "invalid YAML"),
])
def test_errors_name_the_layer(tmp_path: Path, user: str | None, project: str | None, env_value: str | None,
                               needle: str) -> None:
    repo, env = setup(tmp_path, user, project)
    if env_value is not None:
        env["LOOM_DOCKER_WORKSPACE_MOUNT"] = env_value
    with pytest.raises(LoomError) as info:
        load_runtime_config(repo, env=env)
    assert needle in info.value.message
    assert "\n" not in info.value.message
