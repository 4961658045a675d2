"""Fixtures for tests that drive `DockerProvider` against a real engine (scripts/docker-up.sh sets it up).

No engine: the tests skip with the reason printed, except with CI=true, where they fail.
After every test nothing labelled with the test's run id may remain on the engine.
"""

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

import pytest

from loomrun.workflow.model import Image, ImageBuild, Job, Limits, Service
from workers.providers.base import JobContext, ProviderError
from workers.providers.docker import DockerProvider, connect

BUSYBOX = "loom-test/busybox:latest"
HTTPD = "loom-test/httpd:latest"


# ---- engine ----------------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    message = f"Docker engine not usable: {reason} (run scripts/docker-up.sh as root)"
    print(message)
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def engine() -> Any:
    """The low-level SDK client, after checking the engine answers and the test images exist."""
    if os.environ.get("DOCKER_HOST", "").startswith("unix:///nonexistent"):
        _unavailable("DOCKER_HOST points at a dead socket")
    try:
        api = connect(timeout_s=30)
    except ProviderError as exc:
        _unavailable(exc.message)
        raise
    for image in (BUSYBOX, HTTPD):
        try:
            api.inspect_image(image)
        except Exception:
            _unavailable(f"test image {image} is missing")
    return api


def labelled(api: Any, run_id: str) -> list[str]:
    """Everything on the engine labelled with this run id."""
    flt = {"label": [f"loom.run_id={run_id}"]}
    found = [f"container {c['Id'][:12]}" for c in api.containers(all=True, filters=flt)]
    found += [f"network {n['Name']}" for n in api.networks(filters=flt)]
    found += [f"volume {v['Name']}" for v in api.volumes(filters=flt).get("Volumes") or []]
    return found


@pytest.fixture
def run_id(engine: Any) -> Iterator[str]:
    """A fresh run id; the test fails if anything labelled with it is left on the engine."""
    rid = f"loomtest-{os.getpid()}-{time.monotonic_ns()}"
    yield rid
    left = labelled(engine, rid)
    if left:
        from workers.providers.docker import reap_run

        reap_run(rid)
        pytest.fail(f"left on the engine after the test: {left}")


# ---- a job context and its steps -------------------------------------------------------------


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


MakeJob = Callable[..., JobContext]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "seed.txt").write_text("seeded\n")
    return ws


@pytest.fixture
def provider() -> DockerProvider:
    return DockerProvider(timeout_s=60)


@pytest.fixture
def make_job(run_id: str, workspace: Path, provider: DockerProvider) -> Iterator[MakeJob]:
    """Build a JobContext (not yet prepared); every context made is cleaned up after the test."""
    made: list[JobContext] = []

    def make(
        image: str = BUSYBOX,
        mount_mode: str = "ephemeral_volume",
        services: tuple[Service, ...] = (),
        limits: Limits | None = None,
        build: ImageBuild | None = None,
        name: str = "job",
    ) -> JobContext:
        job = Job(
            name=name, stage="test", script=("true",), image=Image(image, build), services=services,
            limits=limits or Limits(),
        )  # fmt: skip
        env = {
            "CI": "true",
            "LOOM_CI": "true",
            "LOOM_PROVIDER": "docker",
            "LOOM_RUN_ID": run_id,
            "LOOM_JOB_ID": name,
            "LOOM_JOB_NAME": name,
            "LOOM_PROJECT_DIR": "/workspace",
        }
        ctx = JobContext(
            run_id=run_id, pipeline_id="loom-local-test", job=job, workspace=workspace, env=env,
            sections=RecordingSections(), mount_mode=mount_mode, grace_s=1.0,
            labels={"loom.run_id": run_id, "loom.job_id": name},
        )  # fmt: skip
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        provider.cleanup(ctx)
