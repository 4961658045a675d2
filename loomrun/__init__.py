"""loomrun: a local CI workflow runner (the `loom` command).

Code in this package runs in the `loom` process (CLI + supervisor), except `loomrun/writer/`, which
runs in the writer process, and `loomrun/protocol/`, the wire contract every process imports.
"""

__version__ = "0.1.0"
