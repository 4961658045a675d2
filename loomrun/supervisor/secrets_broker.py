"""The supervisor's side of the per-run secrets broker (workers/secrets/broker.py). Runs in the
supervisor; never sees a secret value.

The broker is started at the first job that declares a keepass:// or op:// ref (a run without one
never pays for it), as a fresh interpreter (`python -P`: the repo being tested is not on its path)
rather than a fork of the supervisor, so it inherits no fd and no state of the run. Each such job
gets a socket pair: one end is registered with the broker together with the job's vault refs, the
other goes to the worker as its third fd. A broker that died is replaced once at the next job (its
open vaults are lost with it; a run normally opens each vault once). `close()` ends it by EOF.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

from loomrun.protocol.broker import send_registration
from loomrun.workflow.model import Job
from loomrun.workflow.secret_refs import VAULT_SCHEMES, scheme_of

STOP_WAIT_S = 10.0


def vault_refs(job: Job) -> list[str]:
    return sorted({s.ref for s in job.secrets if scheme_of(s.ref) in VAULT_SCHEMES})


class SecretsBroker:
    __slots__ = ("ctl", "proc", "repo_root", "run_id")

    def __init__(self, repo_root: Path, run_id: str) -> None:
        self.repo_root = repo_root
        self.run_id = run_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctl: socket.socket | None = None

    def attach(self, job: Job) -> int | None:
        """The worker's end of a socket registered for `job` (the caller passes it on and closes it),
        or None when the job has no vault refs or no broker could be started (the worker then says so)."""
        refs = vault_refs(job)
        if not refs:
            return None
        for _ in range(2):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                ctl = self._ctl()
                send_registration(ctl, job.name, refs, theirs.fileno())
            except OSError:
                ours.close()
                self.close()  # dead or unstartable: one more try with a fresh one
                continue
            finally:
                theirs.close()
            return ours.detach()
        return None

    def _ctl(self) -> socket.socket:
        if self.ctl is not None and self.proc is not None and self.proc.poll() is None:
            return self.ctl
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs:
            quiet = None if os.environ.get("LOOM_DEBUG") else subprocess.DEVNULL
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-c", "from workers.secrets.broker import main; main()",
                 str(theirs.fileno()), str(self.repo_root)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=quiet, stderr=quiet,
                env={**os.environ, "LOOM_RUN_ID": self.run_id})
        self.ctl = ours
        return ours

    def close(self) -> None:
        if self.ctl is not None:
            with contextlib.suppress(OSError):
                self.ctl.close()
            self.ctl = None
        if self.proc is not None:
            try:
                self.proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
