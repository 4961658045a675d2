"""`loom check [--workflow PATH]` (spec §1.2). Runs in the `loom` process; the receipt is written by a
one-shot writer.

Validates the workflow (`.loom/workflow.yml` found from the current directory, or `--workflow`),
prints every error on stderr (one line each, sorted by line), writes
`.loom/.runtime/receipts/<UTC>-check-<pid>.json` and exits 0 (valid) or 1. The receipt path is
printed relative to the current directory, so it can be used as shown from wherever check ran.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from loomrun import __version__
from loomrun.repo import no_repo, resolve_workflow_path, runtime_dir
from loomrun.workflow.errors import format_diagnostic, one_line
from loomrun.workflow.model import Diagnostic


def main(workflow_arg: str | None = None) -> int:
    from loomrun.workflow.resolve import check_workflow

    workflow, root = resolve_workflow_path(workflow_arg)
    wf, errors = check_workflow(workflow, root)
    warnings = list(wf.warnings) if wf is not None else []
    for warning in warnings:
        _say(f"warning: {one_line(warning.message)}")
    if errors:
        for diag in errors:
            _say(format_diagnostic(diag))
        _say("")
    if root is None:  # the file was checked, but it belongs to no repo: there is no place for a receipt
        raise no_repo(workflow)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    receipt = runtime_dir(root) / "receipts" / f"{stamp}-check-{os.getpid()}.json"
    command = ["loom", "check", *(["--workflow", workflow_arg] if workflow_arg is not None else [])]
    _write(root, receipt, _receipt(workflow, errors, warnings, command))
    shown = os.path.relpath(receipt)
    if errors:
        _say(f"receipt: {shown}")
        _say("loom check failed (exit code 1)")
        return 1
    _say("loom check passed")
    _say(f"receipt: {shown}")
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _receipt(workflow: Path, errors: list[Diagnostic], warnings: list[Diagnostic],
             command: list[str]) -> dict[str, Any]:
    code = 1 if errors else 0
    return {
        "schema_version": "v1", "kind": "loom-check", "loom_version": __version__,
        "command": command, "exit_code": code, "status": "failure" if errors else "success",
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
