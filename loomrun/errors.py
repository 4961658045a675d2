"""User-facing errors and exit codes. Runs in the `loom` process.

A `LoomError` carries one clear line for the terminal; the CLI prints it and exits with its code.
Nothing user-facing is ever raised as a bare Python exception.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    SIGINT = 130
    SIGTERM = 143


class LoomError(Exception):
    """An error meant for the user: `message` is printed as one line, `exit_code` is returned."""

    def __init__(self, message: str, exit_code: int = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = int(exit_code)
