"""Process boundaries, checked by reading the code (design guide: "Boundaries worth keeping").

1. `workers/` never imports `loomrun.supervisor` or `loomrun.writer` (at any level).
2. The supervisor never imports `docker`: no `import docker` anywhere under `loomrun/supervisor/`, no
   module-level import of the Docker provider there (a function-level one is allowed: the janitor
   reaps containers in a forked child), and, checked for real in a fresh interpreter, importing every
   supervisor module and the CLI leaves `docker` out of `sys.modules`.
3. Only `loomrun/writer/` writes under `.loom/.runtime/logs` and `receipts`. Approximation: a
   function (or module body) outside the writer that builds a path with a "logs"/"receipts" literal
   (`x / "logs"`, `os.path.join(..., "receipts")`, an f-string or literal holding `logs/`) and also calls a
   writing operation (open for write, write_text, os.open, write_document, LineFile, copy, rename, ...)
   is flagged. Limits: a path built in one function and written in another, or passed in as an
   argument, is not traced; reading such paths (`loom logs`) is fine and not flagged.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import run_python

ROOT = Path(__file__).resolve().parents[2]
WRITE_ATTRS = {"write_text", "write_bytes", "touch", "write_document", "copy", "copy2", "copyfile",
               "copytree", "move", "replace", "rename", "symlink_to", "hardlink_to"}
WRITE_NAMES = {"write_document", "LineFile", "copy", "copy2", "copyfile", "copytree", "move"}
RUNTIME_PARTS = {"logs", "receipts"}


def _modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _imports(tree: ast.AST, module_level_only: bool = False) -> Iterator[tuple[int, str]]:
    nodes = tree.body if module_level_only and isinstance(tree, ast.Module) else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_there_is_code_to_check() -> None:
    assert _modules("workers") and _modules("loomrun/supervisor") and _modules("loomrun/writer")


def test_the_import_reader_sees_every_form() -> None:
    tree = ast.parse("import docker.errors\nfrom loomrun import writer\ndef f():\n"
                     "    from workers.providers.docker import reap_run\n")
    assert [n for _, n in _imports(tree)] == ["docker.errors", "loomrun", "loomrun.writer",
                                              "workers.providers.docker", "workers.providers.docker.reap_run"]
    assert [n for _, n in _imports(tree, module_level_only=True)] == ["docker.errors", "loomrun", "loomrun.writer"]
    assert _under("loomrun.writer.files", "loomrun.writer") and not _under("loomrun.writers", "loomrun.writer")


@pytest.mark.parametrize("path", _modules("workers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_workers_never_import_supervisor_or_writer(path: Path) -> None:
    bad = [f"line {n}: {name}" for n, name in _imports(_parse(path))
           if _under(name, "loomrun.supervisor", "loomrun.writer")]
    assert not bad, f"{path.relative_to(ROOT)} imports across the worker boundary: {bad}"


@pytest.mark.parametrize("path", _modules("loomrun/supervisor"), ids=lambda p: str(p.relative_to(ROOT)))
def test_supervisor_never_imports_docker(path: Path) -> None:
    tree = _parse(path)
    bad = [f"line {n}: {name}" for n, name in _imports(tree) if _under(name, "docker")]
    bad += [f"line {n}: {name} at module level" for n, name in _imports(tree, module_level_only=True)
            if _under(name, "workers.providers.docker")]
    assert not bad, f"{path.relative_to(ROOT)}: {bad}"


def test_importing_the_supervisor_and_cli_does_not_load_docker() -> None:
    names = ["loomrun.cli", *(_dotted(p) for p in _modules("loomrun/supervisor"))]
    code = ("import importlib, json, sys\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'docker' or m.startswith('docker.'))))\n")
    out = run_python(code, ROOT)
    assert json.loads(out.stdout) == []


def test_the_supervisor_path_does_not_load_filelock() -> None:
    """filelock's fork handlers cost about 1 ms per forked worker once imported (see locks.py)."""
    code = ("import json, sys\nimport loomrun.cli, loomrun.supervisor.run, loomrun.supervisor.cache_diff\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'filelock')))\n")
    out = run_python(code, ROOT)
    assert json.loads(out.stdout) == []


def test_ray_is_imported_in_one_module_only() -> None:
    """Spec §12: `import ray` only in remote runs, in exactly one module (the gateway's adapter)."""
    found = sorted(str(path.relative_to(ROOT)) for folder in ("loomrun", "workers") for path in _modules(folder)
                   if any(_under(name, "ray") for _, name in _imports(_parse(path))))
    assert found == ["loomrun/remote/rayapi.py"]


def test_the_supervisor_and_worker_paths_do_not_load_ray() -> None:
    names = ["loomrun.cli", "loomrun.remote.handle", "workers.main", "workers.providers.remote",
             *(_dotted(p) for p in _modules("loomrun/supervisor"))]
    code = ("import importlib, json, sys\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'ray')))\n")
    out = run_python(code, ROOT)
    assert json.loads(out.stdout) == []


def _dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# ---- only the writer writes under logs/ and receipts/ ---------------------------------------------

def _names_runtime_path(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Div):
            if any(isinstance(s, ast.Constant) and s.value in RUNTIME_PARTS for s in (sub.left, sub.right)):
                return True
        elif isinstance(sub, ast.Call) and _call_name(sub) == "join":
            if any(isinstance(a, ast.Constant) and a.value in RUNTIME_PARTS for a in sub.args):
                return True
        elif _runtime_literal(sub):
            return True
    return False


def _runtime_literal(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and any(f"{part}/" in node.value for part in RUNTIME_PARTS))


def _code(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements without nested functions/classes and without docstring-like bare strings."""
    return [s for s in body if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]


def _call_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _open_for_write(call: ast.Call) -> bool:
    """open(p, "w"), p.open("a"), os.open(p, os.O_WRONLY | ...): a mode we can read that writes."""
    name = _call_name(call)
    if name != "open":
        return False
    args = [*call.args, *(k.value for k in call.keywords if k.arg in ("mode", "flags"))]
    for arg in args:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and set(arg.value) & set("wax+"):
            return True
        flags = {n.attr for n in ast.walk(arg) if isinstance(n, ast.Attribute)}
        if flags & {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}:
            return True
    return False


def _writes(node: ast.AST) -> list[int]:
    lines = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            name = _call_name(sub)
            attr = isinstance(sub.func, ast.Attribute)
            if _open_for_write(sub) or (attr and name in WRITE_ATTRS) or (not attr and name in WRITE_NAMES):
                lines.append(sub.lineno)
    return lines


def _scopes(tree: ast.Module) -> Iterator[ast.AST]:
    """Each function on its own, plus the module body (class bodies are reached through their methods)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield ast.Module(body=_code(node.body), type_ignores=[])
    yield ast.Module(body=_code(tree.body), type_ignores=[])


def runtime_writes(source: str) -> list[int]:
    """Lines of write calls in scopes that also build a logs/receipts path."""
    found: list[int] = []
    for scope in _scopes(ast.parse(source)):
        if _names_runtime_path(scope):
            found += _writes(scope)
    return sorted(found)


def test_the_runtime_write_detector_flags_and_passes_what_it_should() -> None:
    assert runtime_writes("def f(rt):\n    (rt / 'logs' / 'x.json').write_text('{}')\n") == [2]
    assert runtime_writes("def f(rt):\n    p = rt / 'receipts' / 'r.json'\n    open(p, 'w')\n") == [3]
    assert runtime_writes("import os\ndef f(rt):\n    p = os.path.join(rt, 'logs')\n"
                          "    os.open(p, os.O_WRONLY | os.O_CREAT)\n") == [4]
    assert runtime_writes("def f(rt):\n    write_document(rt / f'receipts/{1}.json', {})\n") == [2]
    assert runtime_writes("def f(rt):\n    return (rt / 'logs' / 'x.json').read_text()\n") == []
    assert runtime_writes("def f(rt):\n    p = rt / 'receipts'\n    write_documents([(p, {})])\n") == []
    assert runtime_writes("def f(rt):\n    open(rt / 'cache' / 'x', 'w')\n") == []


def _outside_writer() -> list[Path]:
    writer = ROOT / "loomrun" / "writer"
    return [p for p in [*_modules("loomrun"), *_modules("workers")] if writer not in p.parents]


@pytest.mark.parametrize("path", _outside_writer(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_writer_writes_logs_and_receipts(path: Path) -> None:
    lines = runtime_writes(path.read_text())
    assert not lines, f"{path.relative_to(ROOT)} writes under logs/ or receipts/ at lines {lines}"


def test_a_whole_run_keeps_the_writers_code_out_of_the_supervisor(tmp_path: Path) -> None:
    """The supervisor forks the writer with `writer/spawn.py` only; the writer imports its own code
    after the fork (while the supervisor loads the workflow), so a `loom run`, start to end, never
    has the rest of `loomrun.writer` in the supervisor (checked for real, in a `loom` process)."""
    from tests.process.runner import loom_env, make_repo

    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [s]\na:\n  stage: s\n  target: linux\n"
                                        "  script: ['echo hi']\n")
    code = ("import json, os, sys\nsys.argv = ['loom', 'run', '--local', '-q']\nimport loomrun._entry as e\n"
            "def leave(code):\n"
            "    print(json.dumps([code, sorted(m for m in sys.modules if m.startswith('loomrun.writer'))]))\n"
            "    sys.stdout.flush(); os._exit(0)\n"
            "e._leave = leave\ne.main()\n")
    out = run_python(code, repo, env=loom_env(), timeout=120)
    code_, modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert code_ in (0, None), out.stderr
    assert modules == ["loomrun.writer", "loomrun.writer.spawn"]
