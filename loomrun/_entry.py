"""The `loom` console script. Runs in the `loom` process.

A ^C while Python is still importing the CLI would otherwise end in a KeyboardInterrupt traceback:
until a command installs its own handlers, SIGINT/SIGTERM end the process quietly with 130/143.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from typing import NoReturn


def _quiet_exit(signum: int, _frame: object) -> None:
    os.write(2, b"loom: interrupted\n")
    os._exit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGINT, _quiet_exit)
    signal.signal(signal.SIGTERM, _quiet_exit)
    early = sys.argv[1:2] == ["run"]
    if early:  # the fork server starts before the CLI is imported (see commands/run.py)
        from loomrun.commands import run

        run.start_early(sys.argv[2:])
    from loomrun.cli import main as cli_main

    try:
        cli_main()
    except SystemExit as exc:  # click ends every command this way, with its exit code
        _leave(exc.code)
    finally:
        if early:
            run.close_early()  # not taken: a usage error, --help
        # Only an unexpected exception gets here and goes through interpreter shutdown, which ends
        # with a full collection; frozen objects are not scanned by it.
        gc.freeze()


def _leave(code: object) -> NoReturn:
    """Flush the terminal streams and exit without tearing the interpreter down. Everything a
    command leaves behind is written by then (documents by the writer, which has exited; no atexit
    hook of ours exists), and teardown freed ~260 modules one object at a time: ~5 ms after the
    last line of every `loom` command. A reader that went away (`loom logs | head`) costs nothing."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message")
        print(code, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
