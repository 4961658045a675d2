"""The supervisor's handle on the gateway process (spec §12). Runs in the `loom` process; never
imports `ray` (the gateway does, in its own process).

`Gateway.start()` forks the gateway at once (for `loom run --remote`, first thing, as the fork
server), so it imports Ray while the supervisor loads the workflow and makes the snapshot;
`connect()` sends the address once they are known and waits for the cluster's answer; `shutdown()`
ends it and returns the nodes it used, for the receipt's `remote` block.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from multiprocessing.connection import Connection, wait

from loomrun.protocol import remote as r

CONNECT_TIMEOUT_S = float(os.environ.get("LOOM_REMOTE_CONNECT_TIMEOUT_S", "60"))
SHUTDOWN_TIMEOUT_S = 30.0


class Gateway:
    def __init__(self, pid: int, conn: Connection) -> None:
        self.pid = pid
        self.conn = conn
        self.sentinel = os.pidfd_open(pid)
        self.socket_name = ""

    @classmethod
    def start(cls, address: str | None = None) -> Gateway:
        """`address`: the cluster to join at once, before `connect` (the one on the command line)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            ours.close()
            from loomrun.remote.gateway import serve

            serve(theirs, address)
        theirs.close()
        return cls(pid, Connection(ours.detach()))

    def connect(self, address: str, run_id: str, snapshot: str) -> r.Connected | r.GatewayFailed:
        self.socket_name = f"loom-gateway-{run_id}"
        try:
            self.conn.send(r.Connect(address, run_id, snapshot, self.socket_name))
            ready = wait([self.conn, self.sentinel], timeout=CONNECT_TIMEOUT_S)
            if self.conn in ready:
                reply = self.conn.recv()
                if isinstance(reply, r.Connected | r.GatewayFailed):
                    return reply
        except (EOFError, OSError):
            pass
        why = f"no answer in {CONNECT_TIMEOUT_S:g}s" if self.alive() else "the gateway process died"
        return r.GatewayFailed(f"cannot connect to the Ray cluster at {address}: {why}")

    def alive(self) -> bool:
        return not wait([self.sentinel], timeout=0)

    def shutdown(self) -> tuple[dict[str, object], ...]:
        """End the gateway (its actors go with it); the nodes it used."""
        nodes: tuple[dict[str, object], ...] = ()
        with contextlib.suppress(EOFError, OSError):
            self.conn.send(r.Shutdown())
            if self.conn.poll(SHUTDOWN_TIMEOUT_S):
                reply = self.conn.recv()
                if isinstance(reply, r.Report):
                    nodes = reply.nodes
        self.close()
        return nodes

    def close(self, wait_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        if wait([self.sentinel], timeout=wait_s) == []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):
            os.close(self.sentinel)
