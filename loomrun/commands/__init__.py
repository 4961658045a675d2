"""One module per `loom` subcommand; each runs in the `loom` process and is imported lazily by cli.py."""
