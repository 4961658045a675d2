"""The writer process: the only code that writes under `.loom/.runtime/logs` and `.../receipts`."""
