"""A provider that runs nothing: documentation of the Protocol and a test double. Runs in the worker.

Each step writes its command text (and a newline) to stdout and "exits" 0, or N for a command that
is exactly `exit N`. The workspace is the host snapshot, so artifacts work as on the host.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from loomrun.globs import match_paths
from workers.providers.base import JobContext


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
        shutil.copytree(src, ctx.workspace, symlinks=True, dirs_exist_ok=True)

    def export_paths(self, ctx: JobContext, patterns: Sequence[str], exclude: Sequence[str], dest: Path) -> list[str]:
        found = match_paths(ctx.workspace, patterns, exclude)
        for rel in found:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ctx.workspace / rel, dest / rel, follow_symlinks=False)
        return found

    def memory_exceeded(self, ctx: JobContext) -> bool:
        return False

    def cleanup(self, ctx: JobContext) -> None:
        ctx.state.clear()
