"""The Docker provider: one container per job, its steps run by its shell. Runs in the worker process.

Owns every engine object of one job: the job container, its workspace volume (`ephemeral_volume`),
the per-job network and the service containers, all labelled `loom.run_id` / `loom.job_id` and
removed by `cleanup`. Talks to the engine only through the Docker SDK (low-level `APIClient`), with a
timeout on every call.

The container's main process is `/bin/sh` reading commands from the attach socket (the steps need
`sh` anyway): each step is one line sent to it (`session.Session`), a step whose command holds control
characters an exec. On SIGTERM the shell forwards TERM to every process of the container and exits
once they are gone, so `docker stop` gives the steps the grace period and the engine's SIGKILL ends
the rest; a stop during a step first sends TERM to the step (the shell would act only after it).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from docker.errors import APIError, DockerException
from docker.types import Mount

from loomrun.workflow.model import Service
from workers import jobserver
from workers.providers.base import JobContext, ProviderError, SectionLog
from workers.providers.docker import workspace
from workers.providers.docker.engine import WORKDIR, connect, engine_is_local, labels, object_name, reason
from workers.providers.docker.images import build_image, ensure_image
from workers.providers.docker.limits import memory_exceeded, pids_exceeded
from workers.providers.docker.session import RAW_UNSAFE, SESSION_ENTRYPOINT, Session
from workers.providers.docker.steps import DockerStep, ExecStep
from workers.providers.docker.workspace import SEED_DIR


class DockerProvider:
    """`Provider` for jobs with an image. Per-job ids live in `ctx.state` (all plain strings)."""

    name: ClassVar[str] = "docker"

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self._api: Any = None
        self._sessions: dict[str, Session] = {}  # job container id -> its shell

    def api(self) -> Any:
        if self._api is None:
            self._api = connect(self.timeout_s)
        return self._api

    # -- prepare --

    def prepare(self, ctx: JobContext) -> None:
        api = self.api()
        image = ctx.job.image
        if image is None or not image.name:
            raise ProviderError(f"job {ctx.job.name!r} has no image")
        if image.build is not None:
            build_image(api, ctx)
        else:
            ensure_image(api, image.name, "provider", ctx.log)
        if ctx.job.services:
            self._start_services(api, ctx)
        self._create_job_container(api, ctx)

    def _start_services(self, api: Any, ctx: JobContext) -> None:
        with ctx.sections.section("services") as log:
            try:
                network = api.create_network(object_name(ctx), driver="bridge", labels=labels(ctx, "network"))
            except (APIError, DockerException) as exc:
                raise ProviderError(f"cannot create the job's network: {reason(exc)}", "services") from exc
            ctx.state["network"] = network["Id"]
            ctx.state["services"] = []
            for i, service in enumerate(ctx.job.services):
                self._start_service(api, ctx, i, service, log)
                log.line(f"started {service.name} as {service.hostname}")

    def _start_service(self, api: Any, ctx: JobContext, i: int, service: Service, log: SectionLog) -> None:
        ensure_image(api, service.name, "services", log)
        endpoint = api.create_endpoint_config(aliases=[service.hostname])
        try:
            created = api.create_container(
                service.name,
                name=object_name(ctx, f"-svc{i}-{service.hostname}"),
                hostname=service.hostname,
                environment=dict(service.variables),
                labels=labels(ctx, "service"),
                host_config=api.create_host_config(network_mode=ctx.state["network"], privileged=False),
                networking_config=api.create_networking_config({ctx.state["network"]: endpoint}),
            )
            ctx.state["services"].append(created["Id"])
            api.start(created["Id"])
        except (APIError, DockerException) as exc:
            raise ProviderError(f"service {service.name!r} failed to start: {reason(exc)}", "services") from exc

    def _create_job_container(self, api: Any, ctx: JobContext) -> None:
        assert ctx.job.image is not None
        binds: dict[str, dict[str, str]] = {}
        mounts: list[Mount] = []
        by_copy = ctx.mount_mode == "ephemeral_volume" and engine_is_local()
        if by_copy:
            binds[str(ctx.workspace)] = {"bind": SEED_DIR, "mode": "ro"}
        if ctx.mount_mode == "bind_mount":
            binds[str(ctx.workspace)] = {"bind": WORKDIR, "mode": "rw"}
        elif ctx.mount_mode == "ephemeral_volume":
            # An anonymous volume made with the container and removed with it (`v=True`): two engine
            # round trips fewer than a named one. Labelled like everything else, for the leftover sweep.
            mounts.append(Mount(WORKDIR, None, type="volume", labels=labels(ctx, "workspace")))
        else:
            raise ProviderError(f"unknown workspace mount mode {ctx.mount_mode!r}")
        for host_file, inner in ctx.secret_mounts.items():
            binds[host_file] = {"bind": inner, "mode": "ro"}
        binds.update(jobserver.docker_binds(ctx, engine_is_local()))  # spec §13
        limits = ctx.job.limits
        host_config = api.create_host_config(
            binds=binds,
            mounts=mounts or None,
            network_mode=ctx.state.get("network"),
            mem_limit=limits.memory_bytes,
            memswap_limit=limits.memory_bytes,  # no swap: over the limit means OOM-killed
            nano_cpus=int(limits.cpus * 1e9) if limits.cpus else None,
            pids_limit=limits.pids,
            privileged=False,
        )
        try:
            created = api.create_container(
                ctx.job.image.name, name=object_name(ctx), entrypoint=SESSION_ENTRYPOINT, command=[],
                working_dir=WORKDIR, environment=dict(ctx.env), labels=labels(ctx, "job"),
                host_config=host_config, stdin_open=True,  # (also StdinOnce: our detach ends its stdin)
            )  # fmt: skip
        except APIError as exc:
            raise ProviderError(f"cannot create the job container: {reason(exc)}") from exc
        ctx.state["container"] = created["Id"]
        ctx.state["created_at"] = time.time() - 1
        if ctx.mount_mode == "ephemeral_volume" and not by_copy:
            workspace.seed(api, ctx)
        self._start(api, ctx)
        if by_copy:
            workspace.seed_by_copy(api, ctx, self._sessions[ctx.state["container"]])
        jobserver.docker_enable(ctx, self._sessions.get(ctx.state["container"]))

    def _start(self, api: Any, ctx: JobContext) -> None:
        """Attach to the job container (its shell reads commands from the attach socket), start it and
        wait for the idle mark, or its death: the engine reports a failed exec of the entrypoint (exec
        format error, no /bin/sh) either as an error of `start` or as the container's output and exit."""
        cid = ctx.state["container"]
        try:
            sock = api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            session = self._sessions[cid] = Session(sock)
            api.start(cid)
        except APIError as exc:
            self._died_at_start(api, ctx, str(reason(exc)))
            return
        with contextlib.suppress(OSError):  # a shell that died at once: the stream tells why
            session.send(session.preamble())
        if not session.wait_up(self.timeout_s):
            self._died_at_start(api, ctx, session.early.decode(errors="replace").strip())

    def _died_at_start(self, api: Any, ctx: JobContext, output: str) -> None:
        image = ctx.job.image.name if ctx.job.image else ""
        try:
            code = api.inspect_container(ctx.state["container"])["State"].get("ExitCode")
        except (APIError, DockerException):
            code = None
        if "exec format error" in output:
            raise ProviderError(
                f"exec format error: image {image!r} cannot run /bin/sh on this machine "
                f"(built for another platform, or not a program): {output}"
            )
        raise ProviderError(f"the job container of image {image!r} did not start (exit code {code}): {output}")

    # -- steps --

    def start_step(self, ctx: JobContext, index: int, command: str, stdout_fd: int, stderr_fd: int) -> DockerStep:
        session = self._sessions.get(ctx.state.get("container", ""))
        if session is not None and not RAW_UNSAFE.intersection(command):
            return session.run(command, ctx.trace, stdout_fd, stderr_fd)
        api = self.api()
        argv = ["/bin/sh", "-x", "-c", command] if ctx.trace else ["/bin/sh", "-c", command]
        try:
            exec_id = api.exec_create(ctx.state["container"], argv, workdir=WORKDIR)["Id"]
            stream = api.exec_start(exec_id, stream=True, demux=True)
        except (APIError, DockerException) as exc:
            os.close(stdout_fd)
            os.close(stderr_fd)
            raise ProviderError(f"cannot start step {index + 1}: {reason(exc)}") from exc
        return ExecStep(api, exec_id, stream, stdout_fd, stderr_fd)

    def stop(self, ctx: JobContext, grace_s: float) -> None:
        try:
            api = self.api()
        except ProviderError:
            return  # no engine, nothing of ours can be running there any more
        cid = ctx.state.get("container")
        session = self._sessions.get(cid or "")
        if cid and session is not None:
            self._stop_session(api, cid, session, grace_s)
        for sid in [cid if session is None else None, *ctx.state.get("services", [])]:
            if not sid:
                continue
            with contextlib.suppress(APIError, DockerException):
                api.stop(sid, timeout=max(0, math.ceil(grace_s)))
            _kill_if_running(api, sid)

    def _stop_session(self, api: Any, cid: str, session: Session, grace_s: float) -> None:
        """`docker stop` by hand: the container's shell acts on TERM only between commands, and waits
        for its input when idle. So: TERM to the step in flight (an exec: the shell would act only
        after it), TERM to the shell plus an empty line to wake it (its trap then ends everything
        else, with the grace), and SIGKILL when the grace is over."""
        if session.step is not None:
            with contextlib.suppress(APIError, DockerException):  # no fork left (a job at limits.pids)
                api.exec_start(api.exec_create(cid, ["/bin/sh", "-c", "kill -TERM -1"])["Id"])
        with contextlib.suppress(APIError, DockerException):
            api.kill(cid, signal="SIGTERM")
        with contextlib.suppress(OSError):
            session.send("\n")
        with contextlib.suppress(Exception):  # requests' ReadTimeout when the grace runs out
            api.wait(cid, timeout=max(1, math.ceil(grace_s)))
        _kill_if_running(api, cid)

    # -- workspace transfer --

    def import_tree(self, ctx: JobContext, src: Path) -> None:
        if ctx.mount_mode == "bind_mount":
            workspace.import_into_folder(ctx, src)
        else:
            workspace.import_into_volume(self.api(), ctx, src)

    def export_paths(self, ctx: JobContext, patterns: Sequence[str], exclude: Sequence[str], dest: Path) -> list[str]:
        if ctx.mount_mode == "bind_mount":
            return workspace.export_from_folder(ctx, patterns, exclude, dest)
        return workspace.export_from_volume(self.api(), ctx, patterns, exclude, dest)

    # -- outcome and cleanup --

    def memory_exceeded(self, ctx: JobContext) -> bool:
        return memory_exceeded(self.api(), ctx)

    def pids_exceeded(self, ctx: JobContext) -> bool:
        return pids_exceeded(self.api(), ctx)

    def peak_memory(self, ctx: JobContext) -> int | None:
        return None  # the engine's stats stream would cost a request per tick; not worth it here

    def cleanup(self, ctx: JobContext) -> None:
        try:
            api = self.api()
        except ProviderError:
            return
        session = self._sessions.pop(ctx.state.get("container", ""), None)
        if session is not None:
            session.close()
        for cid in [ctx.state.get("container"), *ctx.state.get("services", [])]:
            if cid:
                with contextlib.suppress(Exception):
                    api.remove_container(cid, force=True, v=True)  # v: the anonymous workspace volume
        if ctx.state.get("network"):
            with contextlib.suppress(Exception):
                api.remove_network(ctx.state["network"])


def _kill_if_running(api: Any, cid: str) -> None:
    """SIGKILL for a container still running once its grace is over."""
    with contextlib.suppress(APIError, DockerException):
        if api.inspect_container(cid)["State"].get("Running"):
            api.kill(cid)
