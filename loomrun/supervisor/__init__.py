"""The supervisor: runs in the `loom` process, owns every child process, never runs user code,
never writes under `.loom/.runtime/logs` or `receipts`, never imports `docker`."""
