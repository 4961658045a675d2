"""Secrets' process boundaries, checked by reading the code: each optional extra is imported by
exactly one module, inside a function (so only when a keepass/op ref or command is used), and the
supervisor and the fork server never import the secrets code (they never see a value)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _importers(package: str) -> dict[str, list[ast.AST]]:
    found: dict[str, list[ast.AST]] = {}
    for path in [*ROOT.glob("loomrun/**/*.py"), *ROOT.glob("workers/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n == package or n.startswith(package + ".") for n in names):
                found.setdefault(str(path.relative_to(ROOT)), []).append(node)
    return found


@pytest.mark.parametrize(("package", "module"), [("pykeepass", "workers/secrets/keepass.py"),
                                                 ("onepassword", "workers/secrets/onepassword.py")])
def test_each_extra_has_one_importer_and_imports_it_lazily(package: str, module: str) -> None:
    found = _importers(package)
    assert list(found) == [module]
    tree = ast.parse((ROOT / module).read_text())
    assert not [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)
                and any(a.name.startswith(package) for a in n.names)]  # never at module level


def test_supervisor_and_fork_server_never_import_secrets_code() -> None:
    code = ("import sys, loomrun.cli, loomrun.commands.run, loomrun.supervisor.run, loomrun.supervisor.loop, "
            "loomrun.supervisor.secrets_broker, loomrun.forkserver.process\n"
            "bad = [m for m in sys.modules if m.startswith(('workers.secrets', 'pykeepass', 'onepassword'))]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# Loaded by every Python process loom starts (a `sitecustomize` on PYTHONPATH; forked processes
# inherit the hook): the first import of a watched package in any process is written to a log.
IMPORT_WATCH = '''
import os, sys
class _Watch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in ("pykeepass", "onepassword"):
            with open(os.environ["LOOM_TEST_IMPORT_LOG"], "a") as fh:
                fh.write(f"{os.getpid()} {name}\\n")
        return None
sys.meta_path.insert(0, _Watch)
'''

ENV_ONLY = """version: v1
stages: [ci]
plain:
  stage: ci
  target: linux
  script: [echo plain]
uses-env:
  stage: ci
  target: linux
  secrets:
    TOKEN: {ref: "env://ENV_TOKEN", file: false}
    KEY: {ref: "env://ENV_KEY"}
  script: ['test -n "$TOKEN" && test -s "$KEY"']
"""

VAULT_REFS = """version: v1
stages: [ci]
deploy:
  stage: ci
  target: linux
  secrets:
    PW: {ref: "keepass://local/main#services/loom/deploy:password"}
    TOKEN: {ref: "op://Engineering/services/loom/deploy/token"}
  script: ['true']
"""


def _watched_imports(tmp_path: Path, repo: Path, *args: str, code: int = 0, **extra: str) -> set[str]:
    """`loom ARGS` with the import watch on; the watched packages imported by any of its processes."""
    from tests.process.runner import loom_env, run_loom

    watch = tmp_path / "watch"
    watch.mkdir(exist_ok=True)
    (watch / "sitecustomize.py").write_text(IMPORT_WATCH)
    log = tmp_path / "imports.log"
    log.unlink(missing_ok=True)
    env = loom_env(HOME=str(tmp_path), LOOM_TEST_IMPORT_LOG=str(log), **extra)
    env["PYTHONPATH"] = f"{watch}:{env.get('PYTHONPATH', '')}"
    result = run_loom(repo, *args, env=env)
    assert result.code == code, result.stderr
    return {line.split()[1].partition(".")[0] for line in log.read_text().splitlines()} if log.exists() else set()


def test_env_only_runs_and_check_never_import_the_extras(tmp_path: Path, vault: Path) -> None:
    """At run time, in every process loom starts: a run whose secrets are all env:// and a `loom
    check` of keepass:// and op:// refs import neither pykeepass nor onepassword. The watch itself
    is proven by a run that does read a keepass secret, and by a plain import."""
    from tests.process.runner import make_repo
    from tests.secrets.conftest import PASSWORD, keepass_config

    repo = make_repo(tmp_path / "env-only", ENV_ONLY, git=False)
    assert _watched_imports(tmp_path, repo, "run", "--local", ENV_TOKEN="tok-7", ENV_KEY="key-8") == set()

    vaults = make_repo(tmp_path / "vaults", VAULT_REFS, git=False)
    keepass_config(vaults, vault)
    assert _watched_imports(tmp_path, vaults, "check") == set()

    (vaults / ".loom" / "workflow.yml").write_text(VAULT_REFS.replace("    TOKEN: {ref: \"op://Engineering/services"
                                                                      "/loom/deploy/token\"}\n", ""))
    assert _watched_imports(tmp_path, vaults, "run", "--local", KP_PASSWORD=PASSWORD) == {"pykeepass"}
    (tmp_path / "imports.log").unlink()
    out = subprocess.run([sys.executable, "-c", "import onepassword"], env={**os.environ,
                         "PYTHONPATH": f"{tmp_path / 'watch'}:{os.environ.get('PYTHONPATH', '')}",
                         "LOOM_TEST_IMPORT_LOG": str(tmp_path / "imports.log")}, check=False)
    assert out.returncode == 0
    assert {line.split()[1] for line in (tmp_path / "imports.log").read_text().splitlines()} >= {"onepassword"}
