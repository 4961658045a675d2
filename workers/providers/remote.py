"""The remote provider: a job's steps run on a Ray cluster node (spec §12). Runs in the job's local
worker, which still owns the job's phases, reports and pipes; this provider only forwards each
Protocol call to the run's gateway process (`loomrun/remote/gateway.py`) over one unix socket per
job. No `ray` here: a worker never imports it.

On the node the job runs with the provider a local run would use (`host`, or `docker` when the job
names an image), in a private copy of the snapshot. A step's bytes come back into the two pipes
this worker made for it (their write ends go to the gateway with the request), so the writer reads
them exactly as a local step's. The step's sentinel is this socket: the gateway says `StepDone`, or
that the node was lost, which fails the job as `worker_crashed` with `node lost: <node id>`.
"""

from __future__ import annotations

import array
import os
import pickle
import socket
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, ClassVar

from loomrun.protocol import messages as m
from loomrun.protocol import remote as r
from workers.providers.base import JobContext, ProviderError
from workers.report import SectionFailed

PLACE_TICK_S = 0.1


class Link:
    """The job's connection to the gateway. Replies come in order; `StepDone` (or a lost node) may
    arrive between a request and its reply, and is kept for the step's handle."""

    def __init__(self, name: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect("\0" + name)
        except OSError as exc:
            self.sock.close()
            raise ProviderError(f"cannot reach the run's gateway process: {exc.strerror or exc}") from exc
        self.conn = Connection(os.dup(self.sock.fileno()))  # each object owns (and closes) its own fd
        self.step_end: r.StepDone | None = None
        self.lost: str | None = None

    def send(self, msg: Any, fds: Sequence[int] = ()) -> None:
        """Framed as `Connection.recv` reads it; MSG_NOSIGNAL: a worker's SIGPIPE is the default
        action (its steps inherit it), and a gateway gone away is an error here, not a death."""
        body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(len(body).to_bytes(4, "big") + body)
        try:
            while view:
                view = view[self.sock.sendmsg([view], [], socket.MSG_NOSIGNAL):]
            if fds:
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                self.sock.sendmsg([bytes([len(fds) % 256])], rights, socket.MSG_NOSIGNAL)  # as recvfds reads it
        except OSError as exc:
            raise ProviderError(f"the run's gateway process is gone: {exc.strerror or exc}") from exc

    def recv(self) -> Any:
        """The next reply, keeping any step end that comes first."""
        while True:
            msg = self.read()
            if not isinstance(msg, r.StepDone):
                return msg

    def read(self) -> Any:
        """One message; a step end is kept."""
        try:
            msg = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise ProviderError("the run's gateway process is gone") from exc
        if isinstance(msg, r.StepDone):
            self.step_end = msg
        return msg

    def ask(self, msg: Any) -> Any:
        if self.lost is not None:
            return r.Failed("lost", self.lost)
        self.send(msg)
        reply = self.recv()
        if isinstance(reply, r.Failed) and reply.kind == "lost":
            self.lost = reply.message
        return reply

    def close(self) -> None:
        self.conn.close()
        self.sock.close()


class RemoteStep:
    def __init__(self, link: Link, index: int) -> None:
        self.link = link
        self.index = index

    @property
    def sentinel(self) -> int:
        return self.link.conn.fileno()

    def poll(self) -> int | None:
        link = self.link
        while link.step_end is None and link.conn.poll(0):
            link.read()  # only a step end is expected now
        end = link.step_end
        if end is None:
            return None
        if end.exit_code is None:
            link.lost = end.lost
            raise SectionFailed(end.lost, m.WORKER_CRASHED)
        return end.exit_code

    def close(self) -> None:
        pass


class RemoteProvider:
    name: ClassVar[str] = "remote"

    def prepare(self, ctx: JobContext) -> None:
        spec = ctx.state["remote"]
        link = Link(spec["socket"])
        ctx.state["link"] = link
        link.send(r.Prepare(ctx.run_id, ctx.pipeline_id, ctx.job, ctx.job.provider, ctx.env, ctx.mount_mode,
                            ctx.trace, ctx.grace_s, ctx.labels, str(ctx.workspace), _secret_files(ctx)))
        while not link.conn.poll(PLACE_TICK_S):  # waiting for a node: a Cancel ends the wait
            if _canceled(ctx):  # closing the link tells the gateway to give up
                ctx.state.pop("link").close()
                raise ProviderError("canceled while waiting for a node")
        reply = link.recv()
        if isinstance(reply, r.Placed) and _canceled(ctx):  # placed as the Cancel came: start no step
            raise ProviderError("canceled while waiting for a node")
        _replay(ctx, getattr(reply, "lines", ()), getattr(reply, "sections", ()))
        if isinstance(reply, r.Placed):
            ctx.state["node"] = reply
            _say(ctx, f"node {reply.node_id} ({reply.address}) " + " ".join(
                f"{k}={v}" for k, v in sorted(reply.labels.items())))
            report = ctx.state.get("placed")
            if report is not None:
                report(reply.node_id, reply.address, reply.labels)
            return
        _fail(link, reply)

    def start_step(self, ctx: JobContext, index: int, command: str, stdout_fd: int, stderr_fd: int) -> RemoteStep:
        link: Link = ctx.state["link"]
        try:
            if link.lost is not None:
                raise SectionFailed(link.lost, m.WORKER_CRASHED)
            link.step_end = None
            link.send(r.Step(index, command), (stdout_fd, stderr_fd))
        finally:
            os.close(stdout_fd)
            os.close(stderr_fd)
        return RemoteStep(link, index)

    def stop(self, ctx: JobContext, grace_s: float) -> None:
        link: Link | None = ctx.state.get("link")
        if link is None or link.lost is not None:
            return
        hurry = ctx.state.get("hurry")
        link.send(r.Stop(grace_s))
        while not link.conn.poll(PLACE_TICK_S):  # a second ^C during the grace cuts it short
            if hurry is not None and hurry() and not ctx.state.get("hurry_sent"):
                ctx.state["hurry_sent"] = True
                link.send(r.Hurry())
        reply = link.recv()
        if isinstance(reply, r.Done):
            ctx.state.setdefault("stop_log", []).extend(reply.lines)
        elif isinstance(reply, r.Failed) and reply.kind == "lost":
            link.lost = reply.message

    def import_tree(self, ctx: JobContext, src: Path) -> None:
        _check(ctx.state["link"], r.Import(str(src)))

    def export_paths(self, ctx: JobContext, patterns: Sequence[str], exclude: Sequence[str], dest: Path) -> list[str]:
        reply = _check(ctx.state["link"], r.Export(tuple(patterns), tuple(exclude), str(dest)))
        return list(reply.files)

    def _limits(self, ctx: JobContext) -> r.Limits | None:
        link: Link | None = ctx.state.get("link")
        if link is None or link.lost is not None:
            return None
        reply = link.ask(r.AskLimits())
        if isinstance(reply, r.Limits):
            ctx.state["peak"] = max(reply.peak_memory or 0, ctx.state.get("peak", 0))
            return reply
        return None

    def memory_exceeded(self, ctx: JobContext) -> bool:
        limits = self._limits(ctx)
        return limits is not None and limits.memory_exceeded

    def pids_exceeded(self, ctx: JobContext) -> bool:
        limits = self._limits(ctx)
        return limits is not None and limits.pids_exceeded

    def peak_memory(self, ctx: JobContext) -> int | None:
        return ctx.state.get("peak") or None

    def cleanup(self, ctx: JobContext) -> None:
        link: Link | None = ctx.state.pop("link", None)
        if link is None:
            return
        try:
            reply = link.ask(r.Cleanup())
            if isinstance(reply, r.Cleaned):
                ctx.state.setdefault("stop_log", []).extend(reply.stops)
                ctx.state.setdefault("cleanup_lines", []).extend(reply.lines)
                if reply.peak_memory:
                    ctx.state["final_peak"] = reply.peak_memory
                ctx.state["remote_cpu"] = reply.cpu_seconds
        except ProviderError:
            pass  # the gateway is gone: the run is going down, the node side cleans up by itself
        finally:
            link.close()


def _canceled(ctx: JobContext) -> bool:
    """Whether the supervisor canceled the job (its pipe is read here: the worker is not waiting on it)."""
    hurry, canceled = ctx.state.get("hurry"), ctx.state.get("canceled")
    if hurry is not None:
        hurry()
    return canceled is not None and bool(canceled())


def _secret_files(ctx: JobContext) -> tuple[tuple[str, str, str], ...]:
    """`file: true` secrets, written here by `workers/secrets.py`, go to the node with the job and are
    written there again (0600, in the job's folder); the variable then names the node's file (host)
    or the same path inside the container (Docker)."""
    out = []
    local = {inner: host for host, inner in ctx.secret_mounts.items()}
    for spec in ctx.job.secrets:
        value = ctx.env.get(spec.name)
        if not spec.file or value is None:
            continue
        path = local.get(value, value)
        try:
            with open(path, encoding="utf-8") as fh:
                out.append((spec.name, value, fh.read()))
        except OSError as exc:
            raise ProviderError(f"cannot read secret file {spec.name}: {exc.strerror or exc}") from exc
    return tuple(out)


def _check(link: Link, msg: Any) -> Any:
    reply = link.ask(msg)
    if isinstance(reply, r.Failed):
        _fail(link, reply)
    return reply


def _fail(link: Link, reply: Any) -> None:
    if isinstance(reply, r.Failed) and reply.kind == "lost":
        link.lost = reply.message
        raise SectionFailed(reply.message, m.WORKER_CRASHED)
    if isinstance(reply, r.Failed) and reply.kind == "refused":
        raise ValueError(reply.message)
    message = reply.message if isinstance(reply, r.Failed) else f"unexpected answer {type(reply).__name__}"
    raise ProviderError(message, reply.section if isinstance(reply, r.Failed) else "provider")


def _replay(ctx: JobContext, lines: r.Lines, sections: r.Sections) -> None:
    """What the node's provider said, into this job's logs: the provider section's lines, then the
    sections it opened (a failed one fails here too, in its own name)."""
    for text, stream in lines:
        if ctx.log is not None:
            ctx.log.line(text, stream)
    for name, sec_lines, failed, message in sections:
        with ctx.sections.section(name) as sec:
            for text, stream in sec_lines:
                sec.line(text, stream)
            if failed:
                raise ProviderError(message, name)


def _say(ctx: JobContext, text: str) -> None:
    if ctx.log is not None:
        ctx.log.line(text)
