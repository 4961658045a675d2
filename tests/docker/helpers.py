"""Helpers for the Docker tests: a recording `Sections`, steps run on real pipes, engine and tree listings."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.providers.base import JobContext
from workers.providers.docker import DockerProvider

BUSYBOX = "loom-test/busybox:latest"
HTTPD = "loom-test/httpd:latest"

MakeJob = Callable[..., JobContext]


def listing(root: Path) -> dict[str, str]:
    """Every path under `root`: a link as `-> target` (never followed), a folder as `/`, a file's text."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            out[rel] = "-> " + os.readlink(path) if path.is_symlink() else "/" if path.is_dir() else path.read_text()
    return out


def labelled(api: Any, run_id: str) -> list[str]:
    """Everything on the engine labelled with this run id."""
    flt = {"label": [f"loom.run_id={run_id}"]}
    found = [f"container {c['Id'][:12]}" for c in api.containers(all=True, filters=flt)]
    found += [f"network {n['Name']}" for n in api.networks(filters=flt)]
    found += [f"volume {v['Name']}" for v in api.volumes(filters=flt).get("Volumes") or []]
    return found


@dataclass
class RecordingSections:
    """`Sections` that keeps every line, and which sections failed."""

    lines: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[RecordingSections.Log]:
        log = RecordingSections.Log(self.lines.setdefault(name, []))
        try:
            yield log
        except BaseException:
            self.failed.append(name)
            raise

    @dataclass
    class Log:
        sink: list[tuple[str, str]]

        def line(self, text: str, stream: str = "stdout") -> None:
            self.sink.append((text, stream))


@dataclass
class StepResult:
    code: int
    out: str
    err: str


class _Drain:
    """Reads a pipe to EOF in a thread; `chunks` grows as bytes arrive."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with os.fdopen(self.fd, "rb", buffering=0) as f:
            while chunk := f.read(65536):
                self.chunks.append(chunk)

    def text(self) -> str:
        return b"".join(self.chunks).decode()


class RunningStep:
    def __init__(self, provider: DockerProvider, ctx: JobContext, command: str) -> None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.out, self.err = _Drain(out_r), _Drain(err_r)
        self.handle = provider.start_step(ctx, 0, command, out_w, err_w)

    def wait_for_output(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.out.text():
            assert time.monotonic() < deadline, f"{needle!r} never printed; got {self.out.text()!r}"
            time.sleep(0.02)

    def finish(self, timeout: float = 120) -> StepResult:
        ready, _, _ = select.select([self.handle.sentinel], [], [], timeout)
        assert ready, "the step's sentinel never became readable"
        code = self.handle.poll()
        assert code is not None, "sentinel readable but poll() is None"
        self.handle.close()
        self.out.thread.join(timeout)
        self.err.thread.join(timeout)
        return StepResult(code, self.out.text(), self.err.text())


def run_step(provider: DockerProvider, ctx: JobContext, command: str) -> StepResult:
    return RunningStep(provider, ctx, command).finish()
