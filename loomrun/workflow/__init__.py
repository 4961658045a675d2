"""The workflow language, PURE: text -> validated, resolved, immutable model -> Graph IR.

No processes, no writes. Imported by the `loom` process and (the model only) by workers.
"""
