"""Code that runs inside a per-job worker process (never in the supervisor or the writer)."""
