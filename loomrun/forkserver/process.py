"""The fork server: a small process that forks the job workers on the supervisor's behalf (a
"zygote"). The supervisor starts it first thing in `loom run`, before its own bootstrap.

Why (measured, ARCHITECTURE.md step 5): forking the supervisor cost it ~1.2 ms of page-table copying
per job plus ~500 copy-on-write faults afterwards. The fork server imports the worker code, and the
Docker SDK when the workflow mentions an image, on the other core while the supervisor is still
loading the workflow and making the snapshot; then it does nothing but fork.

The workers are still the supervisor's children: the fork server forks with `CLONE_PARENT`, so the
supervisor reaps them and gets their exit status and pidfd sentinel exactly as with its own fork.
The fork server ignores ^C and TERM (the supervisor decides), dies with the supervisor
(`PR_SET_PDEATHSIG`), and exits on EOF.

Wire: the supervisor sends a 4-byte length, then the pickled `WorkerSpec` (unpickled by the worker,
not here: see `workers.main.worker_main`); the worker's two
connection fds (and a third, its socket to the run's secrets broker, for a job with vault refs)
ride on the first byte (SCM_RIGHTS). The fork server answers with the worker's pid as
a signed 4-byte integer (negative: errno of a failed fork).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import pickle
import signal
import socket
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, NoReturn

# At import, not when closing: a ^C handler that closes the fork server must not import (the
# interrupted code may be importing this very module).
from loomrun.proctree import TrackingCgroup, close_fds_except, tracking_name

if TYPE_CHECKING:
    from loomrun.protocol.spec import WorkerSpec


CLONE_PARENT = 0x00008000
SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)
PR_SET_PDEATHSIG = 1
_HEADER = 4


class ForkServerDied(OSError):
    pass


class ForkServer:
    """The supervisor's side: `spawn(spec, fds)` returns the pid of a new worker (its child)."""

    def __init__(self, preload_docker: bool = False, preload_remote: bool = False) -> None:
        self.preload_docker = preload_docker
        self.preload_remote = preload_remote  # a --remote run: its workers use the remote provider
        self.retired: list[int] = []  # fork servers that died and were replaced: their cgroups go at close()
        self.pid, self.sock = self._fork()

    def _fork(self) -> tuple[int, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _serve(theirs, self.preload_docker, self.preload_remote)
        theirs.close()
        return pid, ours

    def spawn(self, spec: WorkerSpec, fds: list[int]) -> int:
        """A new worker (the caller's child) running `spec` with `fds` as its connections (supervisor,
        writer and, for a job with vault refs, the secrets broker). A fork
        server that died (killed by hand, OOM) is replaced once; a failed fork raises OSError."""
        try:
            return self._spawn(spec, fds)
        except ForkServerDied:
            self._end()
            self.retired.append(self.pid)  # its tracking cgroup still holds its workers
            self.pid, self.sock = self._fork()
            return self._spawn(spec, fds)

    def _spawn(self, spec: WorkerSpec, fds: list[int]) -> int:
        body = pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
        data = len(body).to_bytes(_HEADER, "little") + body
        try:
            sent = socket.send_fds(self.sock, [data], fds)
            if sent < len(data):
                self.sock.sendall(data[sent:])
            reply = _recv_exactly(self.sock, _HEADER)
        except OSError as exc:
            raise ForkServerDied(f"fork server is gone: {exc.strerror or exc}") from exc
        if reply is None:
            raise ForkServerDied("fork server is gone")
        pid = int.from_bytes(reply, "little", signed=True)
        if pid < 0:
            raise OSError(-pid, os.strerror(-pid))
        return pid

    def close(self) -> None:
        """Called when no spawn is in flight and the workers it forked are reaped. It holds nothing,
        so it need not finish an import first. Its tracking cgroups go with it."""
        self._end()
        for pid in (*self.retired, self.pid):
            TrackingCgroup.left_by(pid)

    def _end(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _serve(sock: socket.socket, preload_docker: bool, preload_remote: bool = False) -> NoReturn:
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        gc.disable()
        libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held across clone()
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:
            os._exit(0)
        close_fds_except(sock.fileno())
        # Into a tracking cgroup of its own first, so every worker it forks is born there and nothing
        # a worker leaves behind can hide (ARCHITECTURE.md, "Stopping a job"). The first cgroup
        # migration of a while waits for an RCU grace period (~16 ms here): paid here, while the
        # supervisor is still importing, not on its way to the first job. Best effort: a host that
        # does not let us (not root, no pids hierarchy) has none.
        TrackingCgroup.adopt(os.getpid(), tracking_name(os.getpid()))
        # Imported here once, not in every worker (and not in the supervisor at all).
        from workers.main import warm_up, worker_main
        from workers.providers import host as _host  # noqa: F401

        if preload_remote:  # 3.5 ms of imports (its wire's NamedTuples) once here, not in every worker
            from workers.providers import remote as _remote  # noqa: F401
        if preload_docker:
            with contextlib.suppress(ImportError):
                from workers.providers import docker as _docker  # noqa: F401

        warm_up()  # one throwaway job here: workers inherit its specialized code and filled caches
        gc.collect()
        gc.freeze()  # what is here now is never collected, so workers do not copy it to collect
        while True:
            msg, fds, _flags, _addr = socket.recv_fds(sock, _HEADER, 3)
            if not msg:
                break
            head = msg + (_recv_exactly(sock, _HEADER - len(msg)) or b"") if len(msg) < _HEADER else msg
            body = _recv_exactly(sock, int.from_bytes(head, "little"))
            if body is None or len(fds) not in (2, 3):
                break
            pid = _clone_parent(libc)
            if pid == 0:
                sock.close()
                worker_main(body, *(Connection(fd) for fd in fds))  # unpickled there (see worker_main)
            for fd in fds:
                os.close(fd)
            sock.sendall(pid.to_bytes(_HEADER, "little", signed=True))
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _clone_parent(libc: ctypes.PyDLL) -> int:
    """fork(), but the child's parent is our parent (the supervisor). Returns -errno on failure."""
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = int(libc.syscall(SYS_CLONE, CLONE_PARENT | signal.SIGCHLD, 0, 0, 0, 0))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    api.PyOS_AfterFork_Parent()
    return pid if pid > 0 else -ctypes.get_errno()
