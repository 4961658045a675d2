"""`WorkflowInvalid`: a workflow that does not pass schema v1. PURE; runs in the `loom` process."""

from __future__ import annotations

import re

from loomrun.errors import LoomError
from loomrun.workflow.model import Diagnostic

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """Control characters (a newline in a quoted key, say) escaped, so an error is always one line."""
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


def format_diagnostic(diag: Diagnostic) -> str:
    """The terminal line: `workflow.yml:12 <message>`; a file-level problem (line 0) has no number."""
    if diag.line <= 0:
        return one_line(f"{diag.file}: {diag.message}")
    return one_line(diag.terminal_line())


class WorkflowInvalid(LoomError):
    """Raised by `load_workflow`; `.diagnostics` holds every error, the message names the first."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        first = format_diagnostic(diagnostics[0]) if diagnostics else "workflow is invalid"
        more = f" (and {len(diagnostics) - 1} more error(s); run `loom check`)" if len(diagnostics) > 1 else ""
        super().__init__(f"invalid workflow: {first}{more}")
        self.diagnostics = list(diagnostics)
