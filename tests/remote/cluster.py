"""A real multi-node Ray cluster on this machine, inside a network namespace that has only loopback.
Runs in the pytest process (it starts and stops the processes; it never imports `ray`).

A holder process (`unshare -n`, `lo` up, then `sleep`) owns the namespace; every Ray process and
every `loom` of the remote tests runs in it through `nsenter --net`, so the cluster binds to
127.0.0.x and nothing leaves the machine. Nodes are `ray start` raylets on 127.0.0.1 (the head,
no CPUs: `loom`'s own machine), 127.0.0.2, 127.0.0.3, ... started one at a time (concurrent starts
raced for ports). `ray start` daemonizes: the Ray processes are neither pytest's descendants nor
carry the leak check's session marker, so the per-test leak check does not see them; this class
finds them by their network namespace instead, and `stop()` kills every one and checks none is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")
HEAD_PORT = 6390


def ray_env(temp: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LOOM_TEST_SESSION" and not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Explicit: with RAY_AUTH_MODE unset, a ~/.ray/auth_token left by any earlier `ray.init()` on the
    # machine turns token auth on for `ray start --head` but not for the worker nodes' `ray start`
    # (Ray 2.60), which then cannot join. The cluster is loopback-only in its own namespace.
    env["RAY_AUTH_MODE"] = "disabled"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    if temp is not None:  # Ray's own files (default: $TMPDIR/ray) go with the cluster's folder
        env["RAY_TMPDIR"] = str(temp)
    return env


class Cluster:
    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 100000"],
                                       env=ray_env(), start_new_session=True)
        self.netns = f"/proc/{self.holder.pid}/ns/net"
        self.ns_id = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = subprocess.run(["nsenter", f"--net={self.netns}", "ip", "-o", "link", "show", "lo"],
                                 capture_output=True, text=True, check=False)
            if "UP" in out.stdout.split(">")[0]:
                self.ns_id = os.readlink(self.netns)
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("the test network namespace did not come up")
        self.temp = Path(tempfile.mkdtemp(prefix="loom-ray-", dir="/tmp"))  # short: Ray's socket paths
        self.address = f"127.0.0.1:{HEAD_PORT}"
        self.nodes: dict[str, str] = {}  # ip -> pool

    # -- running things in the namespace ------------------------------------------------------------
    def cmd(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.netns}", "--", *argv]

    def ray(self, *args: str) -> None:
        out = subprocess.run(self.cmd([RAY, *args]), env=ray_env(self.temp), capture_output=True, text=True,
                             timeout=120, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")

    def start_head(self) -> None:
        self.ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={HEAD_PORT}", "--num-cpus=0",
                 "--include-dashboard=false", f"--temp-dir={self.temp}", "--disable-usage-stats")

    def add_node(self, ip: str, pool: str, cpus: int = 2, target: str = "linux") -> None:
        self.ray("start", f"--address={self.address}", f"--node-ip-address={ip}", f"--num-cpus={cpus}",
                 f"--labels=loom.pool={pool},loom.target={target}", "--disable-usage-stats")
        self.nodes[ip] = pool

    # -- looking at processes -------------------------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        """Every process in the namespace but the holder."""
        found = []
        for proc in psutil.process_iter():
            if proc.pid == self.holder.pid:
                continue
            try:
                if os.readlink(f"/proc/{proc.pid}/ns/net") == self.ns_id:
                    found.append(proc)
            except OSError:
                continue
        return found

    def node_processes(self, ip: str) -> list[psutil.Process]:
        """A node's raylet, everything below it (its Ray workers, the jobs' steps) and its log monitor."""
        roots = []
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                cmd = " ".join(proc.cmdline())
                if (f"--node_ip_address={ip} " in cmd + " " or f"--node-ip-address={ip} " in cmd + " ") \
                        and ("raylet" in cmd or "log_monitor" in cmd):
                    roots.append(proc)
        procs = {p.pid: p for p in roots}
        for root in roots:
            with contextlib.suppress(psutil.Error):
                procs.update((c.pid, c) for c in root.children(recursive=True))
        return list(procs.values())

    def kill_node(self, ip: str) -> None:
        for proc in self.node_processes(ip):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        self.nodes.pop(ip, None)

    def freeze_node(self, ip: str) -> list[psutil.Process]:
        procs = self.node_processes(ip)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGSTOP)
        return procs

    # -- the end ---------------------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """Kill every process in the namespace, then the holder; what had to be killed after a
        first round (Ray's own `ray stop` is not used: it kills Ray processes machine-wide)."""
        left: list[str] = []
        for attempt in range(50):
            procs = self.processes() if self.ns_id else []
            if not procs:
                break
            if attempt > 0:
                left = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in procs if p.is_running()]
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGKILL)
            psutil.wait_procs(procs, timeout=2)
        self.holder.kill()
        self.holder.wait()
        shutil.rmtree(self.temp, ignore_errors=True)
        return left
