"""The `loom` console script. Runs in the `loom` process.

A ^C while Python is still importing the CLI would otherwise end in a KeyboardInterrupt traceback:
until a command installs its own handlers, SIGINT/SIGTERM end the process quietly with 130/143.
"""

from __future__ import annotations

import os
import signal


def _quiet_exit(signum: int, _frame: object) -> None:
    os.write(2, b"loom: interrupted\n")
    os._exit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGINT, _quiet_exit)
    signal.signal(signal.SIGTERM, _quiet_exit)
    from loomrun.cli import main as cli_main

    cli_main()
