"""A job's side of the run's jobserver (spec §13). Runs in the worker process.

The supervisor hands the job the path of a token fifo (`WorkerSpec.jobserver`). A host job's
processes get it in both forms GNU make reads from `MAKEFLAGS`: `fifo:PATH` (make ≥ 4.4) and, last
because only the last one counts and make 4.3 (Debian 12) knows nothing else, `R,W`: two fds of
the fifo the worker opens and every step inherits. A Docker job gets the fifo bind-mounted at
`DOCKER_PATH` and the `fifo:` form only, when the image's make is 4.4 or newer (a make 4.3 stops
at a `fifo:` form it cannot read); otherwise the provider section says it runs without one.

A job without the jobserver (`variables: {LOOM_JOBSERVER: "off"}`, or none in the run) still has
any jobserver words it inherited (loom under `make`) taken out of `MAKEFLAGS`: their fds are not
open in the job, and make would warn.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Protocol

from loomrun.makeflags import jobserver_auth, with_jobserver, without_jobserver

if TYPE_CHECKING:
    from workers.providers.base import JobContext

DOCKER_PATH = "/run/loom-jobserver"


def host_env(env: dict[str, str], state: dict[str, Any], fifo: str, slots: int) -> None:
    """Lay the jobserver over a host job's environment; the fds go to `state["pass_fds"]`."""
    makeflags = env.get("MAKEFLAGS", "")
    if not fifo:
        if jobserver_auth(makeflags) is not None:
            env["MAKEFLAGS"] = without_jobserver(makeflags)
        return
    r = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)  # read and write: never waits for a peer, never EOF
    w = os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)  # a reader exists (r): does not wait either
    state["pass_fds"] = (r, w)
    env["MAKEFLAGS"] = with_jobserver(makeflags, slots, [f"fifo:{fifo}", f"{r},{w}"])


def close(state: dict[str, Any]) -> None:
    for fd in state.pop("pass_fds", ()):
        with contextlib.suppress(OSError):
            os.close(fd)


def make_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `make --version`'s first line, or None (no GNU make)."""
    import re

    match = re.search(r"GNU Make ([0-9]+)\.([0-9]+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


if TYPE_CHECKING:
    class Shell(Protocol):
        """The Docker job container's shell (the provider's session)."""

        def call(self, command: str) -> tuple[int, str]: ...

        def send(self, text: str) -> None: ...


def docker_binds(ctx: JobContext, local_engine: bool) -> dict[str, dict[str, str]]:
    """The fifo, bind-mounted at DOCKER_PATH (an engine on another machine cannot see it)."""
    fifo = ctx.state.get("jobserver", ("", 0))[0]
    if not fifo or not local_engine:
        return {}
    ctx.state["jobserver_mounted"] = True
    return {fifo: {"bind": DOCKER_PATH, "mode": "rw"}}


def docker_enable(ctx: JobContext, shell: Shell | None) -> None:
    """Once the container's shell is up: `MAKEFLAGS` for its steps when the image's make reads the
    fifo form (4.4 or newer), or a line in the provider section saying why the job has none."""
    fifo, slots = ctx.state.get("jobserver", ("", 0))
    if not fifo:
        return
    why = ""
    if not ctx.state.get("jobserver_mounted") or shell is None:
        why = "the Docker engine is not on this machine (the fifo cannot be mounted)"
    else:
        version = make_version(_probe(ctx, fifo, shell))
        if version is None:
            why = "the image has no GNU make"
        elif version < (4, 4):
            why = f"the image's make is {version[0]}.{version[1]}; the fifo form needs make 4.4 or newer"
        else:
            import shlex

            makeflags = with_jobserver(ctx.env.get("MAKEFLAGS", ""), slots, [f"fifo:{DOCKER_PATH}"])
            shell.send(f"export MAKEFLAGS={shlex.quote(makeflags)}\n")  # the steps are this shell's children
            _say(ctx, f"jobserver: make {version[0]}.{version[1]} draws from the run's pool ({DOCKER_PATH})")
            return
    _say(ctx, f"no jobserver: {why}")


def _probe(ctx: JobContext, fifo: str, shell: Shell) -> str:
    """`make --version` in the container: asked once per image in a run (~20 ms each under load),
    the answer kept beside the run's fifo for the image's other jobs."""
    import hashlib

    image = ctx.job.image.name if ctx.job.image is not None else ""
    known = os.path.join(os.path.dirname(fifo), f"make-{hashlib.sha256(image.encode()).hexdigest()[:16]}")
    try:
        with open(known) as fh:
            return fh.read()
    except OSError:
        pass
    out = shell.call("make --version")[1][:1000]
    with contextlib.suppress(OSError):
        with open(f"{known}.{os.getpid()}", "w") as fh:
            fh.write(out)
        os.replace(f"{known}.{os.getpid()}", known)
    return out


def _say(ctx: JobContext, text: str) -> None:
    if ctx.log is not None:
        ctx.log.line(text)
