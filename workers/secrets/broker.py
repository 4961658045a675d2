"""The secrets broker: one process per run, started by the supervisor at the first job that has a
keepass:// or op:// ref. It opens each KeePass database (and signs in to 1Password) at most once per
run and answers each worker the refs of its own job, nothing else. Runs in the broker process
(`python -P -c "from workers.secrets.broker import main; main()" CTL_FD REPO_ROOT`).

Why a process of its own (ARCHITECTURE.md, "Secrets"): a database's key derivation costs about a
second, so it cannot be paid per job; the values must not pass through a process that does not
need them (the supervisor, the fork server); and the one process that holds every vault open is a
fresh interpreter that runs no user code and writes nothing.

Wire: the supervisor sends, on the control socket, a 4-byte length and a JSON header
`{"job": name, "refs": [...]}` with one end of a fresh socket pair riding on it (SCM_RIGHTS); the
other end goes to that job's worker. On that socket the worker sends `{"refs": [...]}` once and gets
`{"results": {ref: {"value": ...} | {"code": ..., "message": ...}}}` back, each result with
`opened` (this answer opened the vault), `opens` (vaults opened so far in this run) and `source`.
A ref the supervisor did not register for the job is refused. EOF on the control socket (the
supervisor finished or died) ends the broker.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from loomrun.protocol.broker import receive_registration
from loomrun.workflow.secret_refs import KeepassRef, OpRef, RefError, parse
from workers.secrets.errors import PROVIDER_UNAVAILABLE, REF_INVALID, SecretError

PR_SET_PDEATHSIG = 1


class Broker:
    def __init__(self, repo_root: str) -> None:
        self.repo_root = repo_root
        self.cwd = os.getcwd()
        self.lock = threading.Lock()
        self.opens = 0
        self._config: tuple[dict[str, Any], dict[str, str], str | None] | SecretError | None = None
        self._vaults: dict[str, Any] = {}  # alias -> Vault | SecretError
        self._vault_locks: dict[str, threading.Lock] = {}
        self._op: Any = None  # OpClient | SecretError
        self._op_lock = threading.Lock()  # the SDK's event loop serves one call at a time

    def config(self) -> tuple[dict[str, Any], dict[str, str], str | None]:
        with self.lock:
            if self._config is None:
                from pathlib import Path

                from loomrun.config import load_runtime_config
                from loomrun.errors import LoomError

                try:
                    cfg = load_runtime_config(Path(self.repo_root))
                    self._config = (dict(cfg.keepass_aliases), dict(cfg.sources), cfg.op_token_env)
                except LoomError as exc:
                    self._config = SecretError(PROVIDER_UNAVAILABLE, f"runtime config: {exc.message}")
            if isinstance(self._config, SecretError):
                raise self._config
            return self._config

    # -- answers -----------------------------------------------------------------------------
    def answer(self, ref: str) -> dict[str, Any]:
        try:
            parsed = parse(ref)
            if isinstance(parsed, KeepassRef):
                vault, opened = self._vault(parsed.alias)
                return {"value": vault.read(parsed.entry, parsed.field), "opened": opened,
                        "source": f"keepass {parsed.alias}", "opens": self.opens}
            if isinstance(parsed, OpRef):
                from workers.secrets.op import resolve

                with self._op_lock:
                    client, opened = self._client()
                    return {"value": resolve(client, parsed), "opened": opened, "source": "1password",
                            "opens": self.opens}
            raise SecretError(REF_INVALID, "only keepass:// and op:// refs are resolved by the broker")
        except RefError as exc:
            return {"code": REF_INVALID, "message": str(exc), "opens": self.opens}
        except SecretError as exc:
            return {**exc.as_dict(), "opens": self.opens}
        except Exception as exc:  # a library's surprise: one line for this ref, the broker lives on
            return {"code": PROVIDER_UNAVAILABLE, "message": f"secrets broker: {type(exc).__name__}",
                    "opens": self.opens}

    def _vault(self, alias: str) -> tuple[Any, bool]:
        """The alias's open database (opened now when this is its first use) and whether it was opened now.
        A failure to open is remembered too: the next job gets the same line without another try."""
        with self.lock:
            lock = self._vault_locks.setdefault(alias, threading.Lock())
        with lock:
            got, opened = self._vaults.get(alias), False
            if got is None:
                got, opened = self._open(alias), True
                self._vaults[alias] = got
        if isinstance(got, SecretError):
            raise got
        return got, opened

    def _open(self, alias: str) -> Any:
        from workers.secrets.aliases import source, unlock
        from workers.secrets.keepass import open_vault

        try:
            aliases, layers, _ = self.config()
            src = source(alias, aliases, layers, os.environ, self.cwd)
            password, keyfile = unlock(src, os.environ, self.cwd)
            with self.lock:
                self.opens += 1
            return open_vault(src.path, password, keyfile, f'keepass alias "{alias}"')
        except SecretError as exc:
            return exc

    def _client(self) -> tuple[Any, bool]:
        opened = False
        if self._op is None:
            from workers.secrets.op import connect

            opened = True
            try:
                _, _, token_env = self.config()
                self._op = connect(token_env, os.environ)
                with self.lock:
                    self.opens += 1
            except SecretError as exc:
                self._op = exc
        if isinstance(self._op, SecretError):
            raise self._op
        return self._op, opened

    # -- serving -----------------------------------------------------------------------------
    def serve(self, job: str, allowed: list[str], conn: Connection) -> None:
        try:
            with conn:
                asked = json.loads(conn.recv_bytes())["refs"]
                results = {}
                for ref in asked:
                    if ref in allowed:
                        results[ref] = self.answer(ref)
                    else:
                        results[ref] = {"code": REF_INVALID, "message": f'job "{job}" did not declare {ref}'}
                conn.send_bytes(json.dumps({"results": results}).encode())
        except (EOFError, OSError, ValueError, KeyError, TypeError):
            pass  # the worker went away (canceled) or spoke nonsense: nothing to answer


def main() -> None:
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; EOF ends us
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        ctl = socket.socket(fileno=int(sys.argv[1]))
        if os.getppid() == 1:
            return
        broker = Broker(sys.argv[2])
        while True:
            got = receive_registration(ctl)
            if got is None:
                break
            job, refs, fd = got
            threading.Thread(target=broker.serve, args=(job, refs, Connection(fd)), daemon=True,
                             name=f"job-{job}").start()
    except (EOFError, OSError, ValueError):
        code = 1
    finally:
        sys.stdout.flush()
        os._exit(code)
