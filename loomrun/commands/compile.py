"""`loom compile` (spec §1.3). Runs in the `loom` process; writes nothing.

Graph IR JSON on stdout (exit 0); errors one per line on stderr (exit 1); warnings as
`warning: <message>` on stderr.
"""

from __future__ import annotations

import json
import sys

from loomrun.repo import resolve_workflow_path
from loomrun.workflow.errors import format_diagnostic, one_line


def main(workflow: str | None) -> int:
    from loomrun.workflow.graph import graph_ir
    from loomrun.workflow.resolve import check_workflow

    path, root = resolve_workflow_path(workflow)
    wf, errors = check_workflow(path, root or path.parent)  # compile writes nothing: any folder will do
    if wf is None:
        for diag in errors:
            print(format_diagnostic(diag), file=sys.stderr)
        return 1
    for warning in wf.warnings:
        print(f"warning: {one_line(warning.message)}", file=sys.stderr)
    sys.stdout.write(json.dumps(graph_ir(wf), indent=2, ensure_ascii=False) + "\n")
    return 0
