"""Runtime config layers (spec §8): user file, project file, env, flag; field by field. Pure file reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loomrun.config import KeepassAlias, alias_env_key, load_runtime_config
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


def test_new_fields_defaults_and_sources(tmp_path: Path) -> None:
    repo, env = setup(tmp_path)
    cfg = load_runtime_config(repo, env=env)
    assert (cfg.retention_runs, cfg.retention_max_age_s, cfg.cache_max_size_bytes) == (50, 14 * 86400, 5 << 30)
    assert (cfg.jobserver, cfg.ray_address, cfg.op_token_env) == ("on", None, "OP_SERVICE_ACCOUNT_TOKEN")
    assert cfg.keepass_aliases == {}
    assert {cfg.sources[f] for f in ("runtime.retention.runs", "runtime.retention.maxAge", "runtime.cache.maxSize",
                                     "runtime.jobserver", "remote.ray.address")} == {"default"}


def test_new_fields_from_files_and_environment(tmp_path: Path) -> None:
    user = "runtime: {retention: {runs: 7, maxAge: 2h}, cache: {maxSize: 512m}, jobserver: off}\n"
    project = "runtime: {retention: {maxAge: 3d}}\nremote: {ray: {address: '10.0.0.5:6379'}}\n"
    repo, env = setup(tmp_path, user, project)
    cfg = load_runtime_config(repo, env=env)
    assert (cfg.retention_runs, cfg.retention_max_age_s, cfg.cache_max_size_bytes) == (7, 3 * 86400, 512 << 20)
    assert (cfg.jobserver, cfg.ray_address) == ("off", "10.0.0.5:6379")  # YAML's `off` is a boolean: taken as meant
    assert cfg.sources["runtime.retention.runs"].endswith("home/.config/loom/config.yml")
    assert cfg.sources["runtime.retention.maxAge"].endswith("repo/.loom/config.yml")
    env.update(LOOM_JOBSERVER="fifo:/run/loom/jobs", RAY_ADDRESS="ray://head:10001")
    cfg = load_runtime_config(repo, env=env)
    assert (cfg.jobserver, cfg.ray_address) == ("fifo:/run/loom/jobs", "ray://head:10001")
    assert (cfg.sources["runtime.jobserver"], cfg.sources["remote.ray.address"]) == ("env LOOM_JOBSERVER",
                                                                                     "env RAY_ADDRESS")


def test_keepass_aliases_merge_per_alias_and_per_field(tmp_path: Path) -> None:
    """Spec §8: a repo file that sets only keyfileEnv for an alias keeps the user file's path and
    passwordEnv; each path is relative to the file that declared it."""
    user = ("providers:\n  keepass:\n    aliases:\n"
            "      team/app: {path: vaults/app.kdbx, passwordEnv: APP_PW}\n"
            "      solo: {path: /abs/solo.kdbx, keyfileEnv: SOLO_KEY}\n")
    project = ("providers:\n  keepass:\n    aliases:\n"
               "      team/app: {keyfileEnv: APP_KEY}\n"
               "      local: {path: ../kp/local.kdbx, passwordEnv: LOCAL_PW}\n")
    repo, env = setup(tmp_path, user, project)
    cfg = load_runtime_config(repo, env=env)
    home = tmp_path / "home" / ".config" / "loom"
    assert cfg.keepass_aliases == {
        "team/app": KeepassAlias("team/app", str(home / "vaults" / "app.kdbx"), "APP_PW", "APP_KEY"),
        "solo": KeepassAlias("solo", "/abs/solo.kdbx", None, "SOLO_KEY"),
        "local": KeepassAlias("local", str(repo / ".loom" / ".." / "kp" / "local.kdbx"), "LOCAL_PW", None),
    }
    assert cfg.sources["providers.keepass.aliases.team/app.path"] == str(home / "config.yml")
    assert cfg.sources["providers.keepass.aliases.team/app.keyfileEnv"] == str(repo / ".loom" / "config.yml")
    assert cfg.sources["providers.keepass.aliases.team/app"] == str(repo / ".loom" / "config.yml")
    # the repo file may also move the vault: its path is then relative to the repo file
    (repo / ".loom" / "config.yml").write_text(project.replace("{keyfileEnv: APP_KEY}", "{path: app.kdbx}"))
    moved = load_runtime_config(repo, env=env).keepass_aliases["team/app"]
    assert moved == KeepassAlias("team/app", str(repo / ".loom" / "app.kdbx"), "APP_PW", None)


def test_validation_happens_on_the_merged_result(tmp_path: Path) -> None:
    """A bad value a higher layer replaces is no error; a field only a lower layer sets is checked
    once merged (an alias whose path no layer gives is an error, whichever layer named it)."""
    user = "runtime: {docker: {workspaceMount: nfs}, retention: {runs: 0}}\n"
    project = "runtime: {docker: {workspaceMount: bind_mount}, retention: {runs: 9}}\n"
    repo, env = setup(tmp_path, user, project)
    cfg = load_runtime_config(repo, env=env)
    assert (cfg.docker_workspace_mount, cfg.retention_runs) == ("bind_mount", 9)
    (repo / ".loom" / "config.yml").write_text("providers: {keepass: {aliases: {a: {keyfileEnv: K}}}}\n"
                                               "runtime: {retention: {runs: 9}}\n")
    env["LOOM_DOCKER_WORKSPACE_MOUNT"] = "bind_mount"  # the environment layer replaces the user file's nfs
    with pytest.raises(LoomError) as info:
        load_runtime_config(repo, env=env)
    assert info.value.message == ('keepass alias "a" has no path in any config layer; '
                                  'set providers.keepass.aliases."a".path (or LOOM_KEEPASS_DB_A_PATH)')
    overlaid = load_runtime_config(repo, env={**env, "LOOM_KEEPASS_DB_A_PATH": "/vaults/a.kdbx"})
    assert overlaid.keepass_aliases["a"] == KeepassAlias("a", "", None, "K")  # the secrets code applies it


@pytest.mark.parametrize(("project", "needle"), [
    ("runtime: {retention: {runs: 0}}\n", '"runtime.retention.runs" must be a whole number of runs from 1'),
    ("runtime: {retention: {runs: true}}\n", '"runtime.retention.runs" must be a whole number'),
    ("runtime: {retention: {maxAge: soon}}\n", "invalid \"runtime.retention.maxAge\": invalid duration 'soon'"),
    ("runtime: {cache: {maxSize: 0}}\n", 'invalid "runtime.cache.maxSize": a memory size must be greater than zero'),
    ("runtime: {cache: {maxSize: 99999999t}}\n", "invalid \"runtime.cache.maxSize\": '99999999t' is too large"),
    ("runtime: {jobserver: maybe}\n", "invalid \"runtime.jobserver\" 'maybe'; expected \"on\", \"off\" or"),
    ("runtime: {jobserver: 'fifo:relative/path'}\n", 'invalid "runtime.jobserver"'),
    ("remote: {ray: {address: 'a b'}}\n", "invalid \"remote.ray.address\" 'a b'"),
    ("remote: {ray: {port: 1}}\n", 'unknown key "remote.ray.port"'),
    ("providers: {op: {serviceAccountTokenEnv: 'not a name'}}\n", "'not a name' is not a variable name"),
    ("providers: {keepass: {aliases: {a: {path: x, passwordEnv: 3}}}}\n",
     'expected a non-empty string for "providers.keepass.aliases."a".passwordEnv"'),
])
def test_bad_values_name_their_layer(tmp_path: Path, project: str, needle: str) -> None:
    repo, env = setup(tmp_path, None, project)
    with pytest.raises(LoomError) as info:
        load_runtime_config(repo, env=env)
    assert needle in info.value.message
    assert info.value.message.startswith(str(repo / ".loom" / "config.yml")) or "unknown key" in needle


def test_a_fifo_as_the_config_file_is_refused_at_once(tmp_path: Path) -> None:
    repo, env = setup(tmp_path)
    os.mkfifo(repo / ".loom" / "config.yml")
    with pytest.raises(LoomError) as info:
        load_runtime_config(repo, env=env)
    assert info.value.message == f"cannot read {repo / '.loom' / 'config.yml'}: not a regular file (a FIFO)"


def test_alias_env_key() -> None:
    assert alias_env_key("team/app") == "TEAM_APP"
    assert alias_env_key("group/sub-project/repo.v2") == "GROUP_SUB_PROJECT_REPO_V2"
    assert alias_env_key("café") == "CAF_"


def test_reading_no_config_file_imports_no_yaml(tmp_path: Path) -> None:
    """Every `loom run` reads the config; without files it costs no pyyaml import."""
    repo, env = setup(tmp_path)
    code = ("import sys\nfrom pathlib import Path\nfrom loomrun.config import load_runtime_config\n"
            f"load_runtime_config(Path({str(repo)!r}), env={{'HOME': {env['HOME']!r}}})\n"
            "print('yaml' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
