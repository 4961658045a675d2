"""The Docker engine: connecting to it, the API version, the labels and names of loom's objects, and
an engine error put in words. Runs in the worker process (and in the supervisor's janitor child).
"""

from __future__ import annotations

import math
import os
from typing import Any

import docker
from docker.errors import APIError, DockerException

from workers.providers.base import JobContext, ProviderError

WORKDIR = "/workspace"
RUN_LABEL = "loom.run_id"
JOB_LABEL = "loom.job_id"
RUNTIME_LABEL = "loom.runtime"  # the .loom/.runtime folder of the run's repo
CHUNK = 1 << 20
API_VERSION = "1.41"


def connect(timeout_s: float = 60.0) -> Any:
    """A low-level client for DOCKER_HOST (or the default socket); ProviderError when it does not answer.

    The API version is fixed (`DOCKER_API_VERSION`, else 1.41: Docker 20.10 and every engine since)
    instead of asked for, which saves a round trip per connection; an older engine refuses the ping,
    and then the version is negotiated after all."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        try:
            client = docker.from_env(version=os.environ.get("DOCKER_API_VERSION") or API_VERSION,
                                     timeout=math.ceil(timeout_s))
            client.api.ping()
        except APIError:
            client = docker.from_env(version="auto", timeout=math.ceil(timeout_s))
            client.api.ping()
    except DockerException as exc:  # also covers requests' ConnectionError wrapped by the SDK
        raise ProviderError(f"Docker daemon unreachable at {where}: {reason(exc)}") from exc
    except OSError as exc:
        raise ProviderError(f"Docker daemon unreachable at {where}: {exc}") from exc
    return client.api


def engine_is_local() -> bool:
    """The engine sees this machine's files (a bind mount of the snapshot means the same folder)."""
    host = os.environ.get("DOCKER_HOST", "")
    return host == "" or host.startswith("unix://")


def reason(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return str(exc.explanation or exc)
    return str(exc).strip() or type(exc).__name__


def labels(ctx: JobContext, role: str) -> dict[str, str]:
    found = {RUN_LABEL: ctx.run_id, JOB_LABEL: ctx.env.get("LOOM_JOB_ID", ctx.job.name)}
    found.update(ctx.labels)
    found["loom.role"] = role
    return found


def object_name(ctx: JobContext, suffix: str = "") -> str:
    return f"{ctx.run_id}-{ctx.job.name}{suffix}"
