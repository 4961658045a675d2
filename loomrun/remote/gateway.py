"""The gateway: one process per remote run, the run's only Ray driver. Forked by the supervisor
(`handle.py`), like the fork server, before the run needs it; it imports Ray while the supervisor
loads the workflow and makes the snapshot, and connects once (`ray.init` is paid once per run,
not per job: ~1 s and ~80 MB each, measured).

Threads: the main one serves the supervisor (`Connect`, `Shutdown`); one accepts workers on the
run's abstract unix socket (peer uid checked); one per job serves that job's worker (`JobLink`);
one per running step pumps the node's output into the step's pipes; one is the watchdog.

A job: `Prepare` checks the placement against the live nodes (an impossible one fails at once,
naming the pool), takes an actor from the pool, gives it the snapshot once and prepares the job on
the node. Each `Step` streams back through a Ray streaming generator; the chunks are written into
the pipes the worker passed, whose read ends the writer holds: the on-disk contract is the local
one. `Stop`, `AskLimits`, `Import`, `Export` and `Cleanup` are one actor call each. A worker that
goes away mid-job (killed, crashed) has its job stopped and its actor killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import threading
import time
from multiprocessing import reduction
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn

from loomrun.proctree import close_fds_except
from loomrun.protocol import remote as r

PR_SET_PDEATHSIG = 1
WAIT_TICK_S = 0.25
STOP_CALL_SLACK_S = 15.0
CONNECT_PROBE_S = 5.0
NODES_TTL_S = 1.0


def serve(ctl: socket.socket, early_address: str | None = None) -> NoReturn:
    """The gateway process, forked by the supervisor; never returns. `early_address`: the cluster
    named on the command line, joined at once (while the supervisor is still bootstrapping)."""
    code = 0
    try:
        _isolate(ctl.fileno())
        Gateway(Connection(ctl.detach())).run(early_address)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _isolate(keep: int) -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with `loom` (spec §12)
    if os.getppid() == 1:
        os._exit(1)
    os.setpgid(0, 0)  # out of the terminal's foreground group: the supervisor decides on ^C
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)
    close_fds_except(keep)
    if not os.environ.get("LOOM_DEBUG"):  # Ray's warnings are not loom's output
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)


class Gateway:
    def __init__(self, ctl: Connection) -> None:
        self.ctl = ctl
        self.rayapi: Any = None
        self.import_error: str | None = None
        self.nodes: list[dict[str, Any]] = []
        self.nodes_at = -NODES_TTL_S
        self.joined: tuple[str, str | None] | None = None  # (address, why it failed) of an early join
        self.nodes_used: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.snapshot: Any = None
        self.snapshot_ready = threading.Event()
        self.snapshot_error: str | None = None
        self.pool: Any = None
        self.links: list[JobLink] = []
        self.closing = False

    def run(self, early_address: str | None) -> None:
        try:
            from loomrun.remote import rayapi  # Ray's import (~0.5 s) overlaps the supervisor's bootstrap

            self.rayapi = rayapi
        except ImportError as exc:
            self.import_error = f"Ray is not installed ({exc.name or exc}): pip install 'loomrun[ray]'"
        if early_address:  # and so does ray.init (0.1-1 s), when the address is on the command line
            self.joined = (early_address, self._join(early_address))
        while True:
            try:
                msg = self.ctl.recv()
            except (EOFError, OSError):
                break
            if isinstance(msg, r.Connect):
                self.ctl.send(self._connect(msg))
            elif isinstance(msg, r.Shutdown):
                break
        self._shutdown()

    # -- connecting -------------------------------------------------------------------------------
    def _join(self, address: str) -> str | None:
        """Become the cluster's driver; None, or why not in one line."""
        if self.rayapi is None:
            return self.import_error or "Ray is not available"
        if address.startswith("ray://"):
            return (f"cannot use {address}: Ray Client addresses are not supported; run loom on a node of the "
                    "cluster and give the head's host:port")
        unreachable = _unreachable(address)
        if unreachable is not None:  # ray.init would retry for minutes
            return f"cannot connect to the Ray cluster at {address}: {unreachable}"
        try:
            self.rayapi.connect(address)
        except Exception as exc:
            return f"cannot connect to the Ray cluster at {address}: {_line(exc)}"
        return None

    def _connect(self, msg: r.Connect) -> r.Connected | r.GatewayFailed:
        if self.joined is not None and self.joined[0] != msg.address:  # the run wants another cluster
            if self.joined[1] is None:
                self.rayapi.shutdown()
            self.joined = None
        why = self.joined[1] if self.joined is not None else self._join(msg.address)
        if why is not None:
            return r.GatewayFailed(why)
        try:
            nodes = self.rayapi.live_nodes()
        except Exception as exc:
            return r.GatewayFailed(f"cannot connect to the Ray cluster at {msg.address}: {_line(exc)}")
        from loomrun.remote.pool import Pool

        self.pool = Pool(msg.run_id)
        threading.Thread(target=self._ship, args=(Path(msg.snapshot),), name="snapshot", daemon=True).start()
        threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind("\0" + msg.socket_name)
        listener.listen(64)
        threading.Thread(target=self._accept, args=(listener,), name="accept", daemon=True).start()
        cpus = sum(n["resources"].get("CPU", 0.0) for n in nodes)
        return r.Connected(msg.address, self.rayapi.VERSION, cpus)

    def _ship(self, snapshot: Path) -> None:
        """The snapshot goes into the object store once per run; each actor fetches it once."""
        from loomrun import tarball

        try:
            self.snapshot = self.rayapi.put(tarball.pack_tree(snapshot))
        except Exception as exc:
            self.snapshot_error = f"cannot ship the snapshot: {_line(exc)}"
        self.snapshot_ready.set()

    def _watchdog(self) -> None:
        while not self.closing:
            with contextlib.suppress(Exception):  # a round that failed is tried again next second
                self.pool.watch()
            time.sleep(1.0)

    def _accept(self, listener: socket.socket) -> None:
        uid = os.getuid()
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            if int.from_bytes(cred[4:8], "little") != uid:  # only `loom`'s own workers
                sock.close()
                continue
            link = JobLink(self, sock)
            with self.lock:
                self.links.append(link)
            threading.Thread(target=link.serve, name="job", daemon=True).start()

    def live_nodes(self) -> list[dict[str, Any]]:
        """The live nodes, asked of the GCS at most once a second (one call per job was measurable)."""
        with self.lock:
            if time.monotonic() - self.nodes_at > NODES_TTL_S:
                self.nodes, self.nodes_at = self.rayapi.live_nodes(), time.monotonic()
            return list(self.nodes)

    def record_node(self, node_id: str, job: str) -> dict[str, Any]:
        """The node's entry in the receipt's `remote` block, with this job added."""
        with self.lock:
            known = node_id in self.nodes_used
        info: dict[str, Any] = {}
        if not known:
            self.nodes_at = -NODES_TTL_S  # a node not seen yet: ask the GCS again
            info = next((n for n in self.live_nodes() if n["id"] == node_id), info)
        with self.lock:
            entry = self.nodes_used.get(node_id)
            if entry is None:
                labels = {k: v for k, v in (info.get("labels") or {}).items() if k.startswith("loom.")}
                entry = self.nodes_used[node_id] = {"id": node_id, "address": info.get("address", ""),
                                                    "labels": labels, "jobs": []}
            entry["jobs"].append(job)
            return entry

    # -- the end ---------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.closing = True
        if self.pool is not None:
            self.pool.close()
        with contextlib.suppress(OSError):
            self.ctl.send(r.Report(tuple(self.nodes_used.values())))
        if self.rayapi is not None and self.pool is not None:
            with contextlib.suppress(Exception):
                self.rayapi.shutdown()


class JobLink:
    """One job's worker, served in its own thread."""

    def __init__(self, gw: Gateway, sock: socket.socket) -> None:
        self.gw = gw
        self.sock = sock
        self.conn = Connection(os.dup(sock.fileno()))
        self.send_lock = threading.Lock()
        self.member: Any = None
        self.job = ""
        self.cleaned = False
        self.streaming: threading.Thread | None = None

    def serve(self) -> None:
        try:
            while True:
                try:
                    msg = self.conn.recv()
                except (EOFError, OSError):
                    break
                reply = self.handle(msg)
                if reply is not None:
                    self.send(reply)
        finally:
            self._abandon()
            self.conn.close()
            self.sock.close()

    def send(self, msg: Any) -> None:
        with self.send_lock, contextlib.suppress(OSError):
            self.conn.send(msg)

    def handle(self, msg: Any) -> Any:
        rayapi = self.gw.rayapi
        try:
            if isinstance(msg, r.Prepare):
                return self._prepare(msg)
            if isinstance(msg, r.Step):
                fds = reduction.recvfds(self.sock, 2)
                self._step(msg, fds[0], fds[1])
                return None
            if isinstance(msg, r.Cleanup):
                return self._cleanup()
            if self.member is None:
                return r.Failed("gateway", "no job is placed on a node")
            if isinstance(msg, r.Hurry):
                rayapi.call(self.member.actor, "hurry")
                return None
            if isinstance(msg, r.Stop):
                lines = self._wait(rayapi.call(self.member.actor, "stop", msg.grace_s),
                                   msg.grace_s + STOP_CALL_SLACK_S)
                return r.Done(tuple(lines))
            if isinstance(msg, r.AskLimits):
                return self._limits()
            if isinstance(msg, r.Import):
                return self._import(msg)
            if isinstance(msg, r.Export):
                return self._export(msg)
            return r.Failed("gateway", f"unknown request {type(msg).__name__}")
        except rayapi.NodeLost:
            return r.Failed("lost", self._lost_reason())
        except Exception as exc:  # a fault of the gateway's own: the job fails with it, the run goes on
            return r.Failed("gateway", f"gateway error: {type(exc).__name__}: {_line(exc)}")

    # -- requests --------------------------------------------------------------------------------------
    def _prepare(self, msg: r.Prepare) -> Any:
        from loomrun.remote.placement import infeasible, placement

        rayapi = self.gw.rayapi
        self.job = msg.job.name
        nodes = self.gw.live_nodes()
        place = placement(msg.job, nodes)
        why = infeasible(msg.job, place, nodes)
        if why is not None:
            return r.Failed("infeasible", why)
        from loomrun.remote.pool import VersionMismatch

        try:
            member = self.gw.pool.acquire(place, abort=lambda: self.conn.poll(0))
        except VersionMismatch as exc:
            return r.Failed("provider", str(exc))
        if member is None:
            return r.Failed("gateway", "placement abandoned")
        self.member = member
        if not member.loaded:
            self.gw.snapshot_ready.wait()
            if self.gw.snapshot_error:
                return r.Failed("provider", self.gw.snapshot_error)
            answer = self._wait(rayapi.call(member.actor, "load_snapshot", self.gw.snapshot))
            if answer[0] != "ok":
                return r.Failed("provider", f"cannot unpack the snapshot on node {member.node_id}: {answer[1]}")
            member.loaded = True
        node = self.gw.record_node(member.node_id, self.job)
        answer = self._wait(rayapi.call(member.actor, "prepare", msg))
        if answer[0] != "ok":
            lines, sections = (answer[3], answer[4]) if len(answer) > 3 else ((), ())
            return r.Failed("provider", answer[1], answer[2], lines, sections)
        return r.Placed(member.node_id, node["address"], dict(node["labels"]), answer[1], answer[2])

    def _step(self, msg: r.Step, out_fd: int, err_fd: int) -> None:
        thread = threading.Thread(target=self._pump, args=(msg, out_fd, err_fd), name="step", daemon=True)
        self.streaming = thread
        thread.start()

    def _pump(self, msg: r.Step, out_fd: int, err_fd: int) -> None:
        rayapi = self.gw.rayapi
        member = self.member
        fds = {ord("1"): out_fd, ord("2"): err_fd}
        code: int | None = None
        try:
            gen = rayapi.stream(member.actor, "run_step", msg.step, msg.command)
            while code is None:
                if member.lost is not None:
                    raise rayapi.NodeLost(member.lost)
                if not rayapi.ready([gen], WAIT_TICK_S):
                    continue
                ref = rayapi.next_item(gen)
                if ref is None:
                    raise rayapi.NodeLost(f"node lost: {member.node_id} (the step's stream ended early)")
                item: bytes = rayapi.get(ref)
                fd = fds.get(item[0])
                if fd is not None:
                    try:
                        _write_all(fd, memoryview(item)[1:])
                    except OSError:  # the writer's end is gone (the run is going down): drain on
                        del fds[item[0]]
                elif item[:1] == b"9":
                    code = int(item[1:])
        except rayapi.NodeLost:
            member.lost = member.lost or f"node lost: {member.node_id}"
        finally:
            for fd in (out_fd, err_fd):
                os.close(fd)
        self.send(r.StepDone(msg.step, code, "" if code is not None else str(member.lost)))

    def _limits(self) -> Any:
        answer = self._wait(self.gw.rayapi.call(self.member.actor, "limits"))
        if answer[0] == "error":
            return r.Failed("provider", answer[1])
        return r.Limits(bool(answer[0]), bool(answer[1]), answer[2])

    def _import(self, msg: r.Import) -> Any:
        from loomrun import tarball

        answer = self._wait(self.gw.rayapi.call(self.member.actor, "import_tree", tarball.pack_tree(Path(msg.src))))
        return r.Done() if answer[0] == "ok" else r.Failed("provider", answer[1])

    def _export(self, msg: r.Export) -> Any:
        from loomrun import tarball

        answer = self._wait(self.gw.rayapi.call(self.member.actor, "export_paths", msg.patterns, msg.exclude))
        if answer[0] == "refused":
            return r.Failed("refused", answer[1])
        if answer[0] != "ok":
            return r.Failed("provider", answer[1])
        tarball.unpack(answer[2], Path(msg.dest))
        return r.Done(files=tuple(answer[1]))

    def _cleanup(self) -> Any:
        if self.streaming is not None:
            self.streaming.join(STOP_CALL_SLACK_S)
        member, self.member = self.member, None
        if member is None:
            return r.Cleaned((), (), None, 0.0)
        self.cleaned = True
        try:
            lines, stops, peak, cpu = self._wait_on(member, self.gw.rayapi.call(member.actor, "cleanup"))
        except self.gw.rayapi.NodeLost:
            self.gw.pool.release(member, keep=False)
            return r.Failed("lost", member.lost or f"node lost: {member.node_id}")
        self.gw.pool.release(member, keep=True)
        return r.Cleaned(tuple(lines), tuple(stops), peak, float(cpu))

    def _abandon(self) -> None:
        """The worker went away with its job still placed: stop it on the node, then drop the actor."""
        member, self.member = self.member, None
        if member is None or self.cleaned:
            return
        rayapi = self.gw.rayapi
        with contextlib.suppress(Exception):
            self._wait_on(member, rayapi.call(member.actor, "stop", 0.0), STOP_CALL_SLACK_S)
            self._wait_on(member, rayapi.call(member.actor, "cleanup"), STOP_CALL_SLACK_S)
        self.gw.pool.release(member, keep=False)

    # -- waiting on the node ----------------------------------------------------------------------------
    def _wait(self, ref: Any, limit_s: float | None = None) -> Any:
        return self._wait_on(self.member, ref, limit_s)

    def _wait_on(self, member: Any, ref: Any, limit_s: float | None = None) -> Any:
        """The call's value; NodeLost when the watchdog gives up on the node (or the call's own
        limit passes) first."""
        rayapi = self.gw.rayapi
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while not rayapi.ready([ref], WAIT_TICK_S):
            if member.lost is not None:
                raise rayapi.NodeLost(member.lost)
            if deadline is not None and time.monotonic() > deadline:
                member.lost = f"node lost: {member.node_id} (no answer)"
                raise rayapi.NodeLost(member.lost)
        try:
            return rayapi.get(ref)
        except rayapi.NodeLost:
            member.lost = member.lost or f"node lost: {member.node_id}"
            raise

    def _lost_reason(self) -> str:
        member = self.member
        if member is None:
            return "node lost"
        return member.lost or f"node lost: {member.node_id}"


def _unreachable(address: str) -> str | None:
    """Why the cluster's GCS port does not take a connection (None when it does, or when the
    address is not host:port, e.g. `auto`)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_PROBE_S).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def _line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
