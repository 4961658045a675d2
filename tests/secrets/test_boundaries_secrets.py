"""Secrets' process boundaries, checked by reading the code: each optional extra is imported by
exactly one module, inside a function (so only when a keepass/op ref or command is used), and the
supervisor and the fork server never import the secrets code (they never see a value)."""

from __future__ import annotations

import ast
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
