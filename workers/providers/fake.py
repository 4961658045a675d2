"""A provider that runs nothing: documentation of the Protocol and a test double. Runs in the worker.

Each step writes its command text (and a newline) to stdout and "exits" 0, or N for a command that
is exactly `exit N`. The workspace is the host snapshot, so artifacts work as on the host.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from loomrun.globs import EMPTY_DIRS, match_paths
from workers.providers.base import JobContext
from workers.trees import copy_into, copy_paths


class FakeStep:
    """Already over when returned: the sentinel is a pipe whose write end is closed."""

    def __init__(self, code: int) -> None:
        self._code = code
        self._read, write = os.pipe()
        os.close(write)

    @property
    def sentinel(self) -> int:
        return self._read

    def poll(self) -> int | None:
        return self._code

    def close(self) -> None:
        os.close(self._read)


class FakeProvider:
    name: ClassVar[str] = "fake"

    def prepare(self, ctx: JobContext) -> None:
        ctx.state["steps"] = 0

    def start_step(self, ctx: JobContext, index: int, command: str, stdout_fd: int, stderr_fd: int) -> FakeStep:
        ctx.state["steps"] = ctx.state.get("steps", 0) + 1
        os.write(stdout_fd, command.encode() + b"\n")
        os.close(stdout_fd)  # the provider owns the fds it is given, as the host provider does
        os.close(stderr_fd)
        match = re.fullmatch(r"\s*exit\s+(\d+)\s*", command)
        return FakeStep(int(match.group(1)) % 256 if match else 0)

    def stop(self, ctx: JobContext, grace_s: float) -> None:
        pass

    def import_tree(self, ctx: JobContext, src: Path) -> None:
        copy_into(src, ctx.workspace)

    def export_paths(self, ctx: JobContext, patterns: Sequence[str], exclude: Sequence[str], dest: Path) -> list[str]:
        return copy_paths(ctx.workspace, match_paths(ctx.workspace, patterns, exclude, dirs=EMPTY_DIRS), dest)[0]

    def memory_exceeded(self, ctx: JobContext) -> bool:
        return False

    def cleanup(self, ctx: JobContext) -> None:
        ctx.state.clear()
