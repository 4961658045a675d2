"""`WorkflowInvalid`: a workflow that does not pass schema v1. PURE; runs in the `loom` process."""

from __future__ import annotations

from loomrun.errors import LoomError
from loomrun.workflow.model import Diagnostic


def format_diagnostic(diag: Diagnostic) -> str:
    """The terminal line: `workflow.yml:12 <message>`; a file-level problem (line 0) has no number."""
    if diag.line <= 0:
        return f"{diag.file}: {diag.message}"
    return diag.terminal_line()


class WorkflowInvalid(LoomError):
    """Raised by `load_workflow`; `.diagnostics` holds every error, the message names the first."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        first = format_diagnostic(diagnostics[0]) if diagnostics else "workflow is invalid"
        more = f" (and {len(diagnostics) - 1} more error(s); run `loom check`)" if len(diagnostics) > 1 else ""
        super().__init__(f"invalid workflow: {first}{more}")
        self.diagnostics = list(diagnostics)
