"""The `loom` console script. Runs in the `loom` process.

A ^C while Python is still importing the CLI would otherwise end in a KeyboardInterrupt traceback:
until a command installs its own handlers, SIGINT/SIGTERM end the process quietly with 130/143.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
from typing import NoReturn


def _quiet_exit(signum: int, _frame: object) -> None:
    os.write(2, b"loom: interrupted\n")
    run = sys.modules.get("loomrun.commands.run")
    if run is not None:  # the fork server started early: it goes, with its tracking cgroup
        with contextlib.suppress(Exception):
            run.close_early()
    os._exit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGINT, _quiet_exit)
    signal.signal(signal.SIGTERM, _quiet_exit)
    early = sys.argv[1:2] == ["run"]
    if early:  # the fork server starts before the CLI is imported (see commands/run.py)
        from loomrun.commands import run

        run.start_early(sys.argv[2:])
    from loomrun.cli import main as cli_main

    code: object = 0
    try:
        cli_main()
    except SystemExit as exc:  # click ends every command this way, with its exit code
        code = exc.code
    except OSError as exc:  # the terminal itself failed: `loom --help > /dev/full`
        code = f"loom: {exc.strerror or exc}"
    finally:
        if early:
            run.close_early()  # not taken: a usage error, --help
        # An unexpected exception goes on through interpreter shutdown, which ends with a full
        # collection; frozen objects are not scanned by it.
        gc.freeze()
    _leave(code)


def _leave(code: object) -> NoReturn:
    """Flush the terminal streams and exit without tearing the interpreter down. Everything a
    command leaves behind is written by then (documents by the writer, which has exited; no atexit
    hook of ours exists), and teardown freed ~260 modules one object at a time: ~5 ms after the
    last line of every `loom` command. A reader that went away (`loom logs | head`) costs nothing;
    output that cannot be written (a full disk) is one line on stderr and exit 1."""
    status = code if isinstance(code, int) else 0 if code is None else 1
    if isinstance(code, str):  # sys.exit("message"), or the line for an OSError above
        _say(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            pass
        except (OSError, ValueError) as exc:
            if stream is sys.stdout and status == 0:
                status = 1
                _say(f"loom: {getattr(exc, 'strerror', None) or exc}")
    os._exit(status)


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode())
