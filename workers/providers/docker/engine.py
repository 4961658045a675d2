"""The Docker engine: connecting to it, the API version, the labels and names of loom's objects, and
an engine error put in words. Runs in the worker process (and in the supervisor's janitor child).
"""

from __future__ import annotations

import math
import os
import socket
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
    try:
        try:
            client = docker.from_env(version=os.environ.get("DOCKER_API_VERSION") or API_VERSION,
                                     timeout=math.ceil(timeout_s))
            client.api.ping()
        except APIError:
            client = docker.from_env(version="auto", timeout=math.ceil(timeout_s))
            client.api.ping()
    except (DockerException, OSError) as exc:  # DockerException also wraps requests' ConnectionError
        raise ProviderError(unreachable(exc)) from exc
    return client.api


def unreachable(exc: BaseException) -> str:
    """`Docker daemon unreachable at <where>: <cause>; <how to start it>`, in one line."""
    host = os.environ.get("DOCKER_HOST")
    where = f"{host} (DOCKER_HOST)" if host else DEFAULT_HOST
    if host and not host.startswith("unix://"):
        hint = "check that the engine there runs and accepts connections, or unset DOCKER_HOST"
    else:
        hint = "start the engine (sudo systemctl start docker, or run dockerd) or set DOCKER_HOST to one that runs"
    return f"Docker daemon unreachable at {where}: {reason(exc)}; {hint}"


def engine_is_local() -> bool:
    """The engine sees this machine's files (a bind mount of the snapshot means the same folder)."""
    host = os.environ.get("DOCKER_HOST", "")
    return host == "" or host.startswith("unix://")


def reason(exc: BaseException) -> str:
    """The cause of an engine error in words, in one line: the engine's own explanation, or what the
    connection's underlying OS error means. Never a Python repr (requests and urllib3 nest them:
    `('Connection aborted.', FileNotFoundError(2, ...))`)."""
    if isinstance(exc, APIError):
        text = str(exc.explanation or "") or f"the engine answered HTTP {exc.status_code}"
    elif (cause := _os_error(exc)) is not None:
        text = _OS_WORDS.get(type(cause)) or (cause.strerror or type(cause).__name__).lower()
    else:
        text = str(exc) or type(exc).__name__
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."


def _os_error(exc: BaseException) -> OSError | None:
    """The OS error at the bottom of a chain of wrapped exceptions (causes, contexts, arguments, and
    urllib3's `reason`), if there is one."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and (current.errno is not None or isinstance(current, TimeoutError)):
            return current
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo += [e for e in nested if isinstance(e, BaseException)]
    return None


DEFAULT_HOST = "unix:///var/run/docker.sock"
MAX_REASON = 300
_OS_WORDS: dict[type[OSError], str] = {
    FileNotFoundError: "no such socket",
    ConnectionRefusedError: "nothing accepts connections there (connection refused)",
    PermissionError: "permission denied (is this user in the docker group?)",
    ConnectionResetError: "the engine closed the connection",
    BrokenPipeError: "the engine closed the connection",
    TimeoutError: "the engine did not answer in time",
    socket.gaierror: "unknown host name",
}


def labels(ctx: JobContext, role: str) -> dict[str, str]:
    found = {RUN_LABEL: ctx.run_id, JOB_LABEL: ctx.env.get("LOOM_JOB_ID", ctx.job.name)}
    found.update(ctx.labels)
    found["loom.role"] = role
    return found


def object_name(ctx: JobContext, suffix: str = "") -> str:
    return f"{ctx.run_id}-{ctx.job.name}{suffix}"
