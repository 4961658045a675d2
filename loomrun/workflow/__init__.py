"""The workflow language, PURE: text -> validated, resolved, immutable model -> Graph IR.

No processes, no writes. Imported by the `loom` process and (the model only) by workers.
`load_workflow` / `check_workflow` live in `resolve.py` (imported lazily by callers, it pulls in
pyyaml); only the exception is re-exported here so importing the model stays cheap.
"""

from loomrun.workflow.errors import WorkflowInvalid, format_diagnostic

__all__ = ["WorkflowInvalid", "format_diagnostic"]
