"""`loom check` (spec §1.2). Runs in the `loom` process; the receipt is written by a one-shot writer.

Validates `.loom/workflow.yml` (found from the current directory), prints one line per error on
stderr, writes `.loom/.runtime/receipts/<UTC>-check-<pid>.json` and exits 0 (valid) or 1.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from loomrun import __version__
from loomrun.repo import DEFAULT_WORKFLOW, discover_repo_root, runtime_dir
from loomrun.workflow.errors import format_diagnostic, one_line
from loomrun.workflow.model import Diagnostic


def main() -> int:
    from loomrun.workflow.resolve import check_workflow

    root = discover_repo_root()
    workflow = root / DEFAULT_WORKFLOW
    wf, errors = check_workflow(workflow, root)
    warnings = list(wf.warnings) if wf is not None else []
    for warning in warnings:
        _say(f"warning: {one_line(warning.message)}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    receipt = runtime_dir(root) / "receipts" / f"{stamp}-check-{os.getpid()}.json"
    doc = _receipt(workflow, errors, warnings)
    shown = receipt.relative_to(root)
    if errors:
        for diag in errors:
            _say(format_diagnostic(diag))
        _say("")
    _write(root, receipt, doc)
    if errors:
        _say(f"receipt: {shown}")
        _say("loom check failed (exit code 1)")
        return 1
    _say("loom check passed")
    _say(f"receipt: {shown}")
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _receipt(workflow: Path, errors: list[Diagnostic], warnings: list[Diagnostic]) -> dict[str, Any]:
    code = 1 if errors else 0
    return {
        "schema_version": "v1", "kind": "loom-check", "loom_version": __version__,
        "command": ["loom", "check"], "exit_code": code, "status": "failure" if errors else "success",
        "workflow_schema_v1": {
            "workflow_path": str(workflow), "valid": not errors,
            "errors": [d.as_receipt_item() for d in errors],
            "warnings": [d.as_receipt_item() for d in warnings],
        },
    }


def _write(root: Path, receipt: Path, doc: dict[str, Any]) -> None:
    from loomrun.writer.oneshot import write_documents

    ensure_runtime_gitignore(root)
    write_documents([(receipt, doc)])


def ensure_runtime_gitignore(root: Path) -> None:
    """`.loom/.runtime/.gitignore` holding `*` (spec §3.1). Not a receipt or log, so written here:
    the one-shot writer only writes JSON documents."""
    from loomrun.errors import LoomError

    path = runtime_dir(root) / ".gitignore"
    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".gitignore.{os.getpid()}.tmp")
        tmp.write_text("*\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise LoomError(f"cannot write {path.parent}: {exc.strerror or exc}") from None
