"""Fixtures for tests that drive `DockerProvider` against a real engine (scripts/docker-up.sh sets it up).

No engine: the tests skip with the reason printed, except with CI=true, where they fail.
After every test nothing labelled with the test's run id may remain on the engine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loomrun.workflow.model import Image, ImageBuild, Job, Limits, Service
from tests.docker.helpers import BUSYBOX, HTTPD, MakeJob, RecordingSections, labelled
from workers.providers.base import JobContext, ProviderError
from workers.providers.docker import DockerProvider, connect

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


@pytest.fixture(autouse=True)
def _needs_engine(engine: Any) -> None:
    """Every test here needs the engine: skip (or, with CI=true, fail) before it starts without one."""


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
