"""The per-run secrets broker as a real process: it answers a job only the refs the supervisor
registered for it, opens a vault once however many jobs ask at the same time, remembers a failure,
exits when its control socket closes, and dies with a SIGKILLed `loom` (nothing left behind)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import psutil
import pytest

from loomrun.supervisor.secrets_broker import SecretsBroker
from loomrun.workflow.model import Job, SecretSpec
from tests.process.runner import Background, loom_env, make_repo, run_loom
from tests.secrets.conftest import PASSWORD, VALUES, keepass_config

REF = "keepass://local/main#services/loom/deploy:password"


def job(name: str, *refs: str) -> Job:
    return Job(name=name, stage="ci", script=("true",),
               secrets=tuple(SecretSpec(f"S{i}", ref) for i, ref in enumerate(refs)))


def ask(fd: int, *refs: str) -> dict[str, dict[str, object]]:
    with Connection(fd) as conn:
        conn.send_bytes(json.dumps({"refs": list(refs)}).encode())
        results: dict[str, dict[str, object]] = json.loads(conn.recv_bytes())["results"]
        return results


@pytest.fixture
def broker(tmp_path: Path, vault: Path, monkeypatch: pytest.MonkeyPatch) -> SecretsBroker:
    repo = tmp_path / "repo"
    repo.mkdir()
    keepass_config(repo, vault)
    monkeypatch.setenv("KP_PASSWORD", PASSWORD)
    monkeypatch.setenv("HOME", str(tmp_path))
    return SecretsBroker(repo, "loom-run-local-test")


def test_a_job_gets_only_its_own_refs(broker: SecretsBroker) -> None:
    try:
        fd = broker.attach(job("a", REF))
        assert fd is not None
        other = "keepass://local/main#services/loom/deploy:token"
        answers = ask(fd, REF, other)
        assert answers[REF]["value"] == VALUES["password"]
        assert answers[other] == {"code": "SECRETS_REF_INVALID", "message": f'job "a" did not declare {other}'}
        assert broker.attach(job("no-vault", "env://X")) is None  # nothing to register, no socket
    finally:
        broker.close()
    assert broker.proc is None


def test_concurrent_jobs_share_one_open_and_a_failure_is_remembered(broker: SecretsBroker) -> None:
    wrong = "keepass://nowhere#x:password"
    try:
        fds = [broker.attach(job(f"j{i}", REF, wrong)) for i in range(6)]
        results: list[dict[str, dict[str, object]]] = []
        threads = [threading.Thread(target=lambda fd=fd: results.append(ask(fd, REF, wrong))) for fd in fds
                   if fd is not None]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 6
        assert sum(bool(r[REF]["opened"]) for r in results) == 1
        assert {r[REF]["opens"] for r in results} == {1}  # the unknown alias never reached an open
        assert {r[wrong]["code"] for r in results} == {"SECRETS_PROVIDER_UNAVAILABLE"}
        assert all('keepass alias "nowhere" is not configured' in str(r[wrong]["message"]) for r in results)
    finally:
        broker.close()


def test_a_dead_broker_is_replaced_at_the_next_job(broker: SecretsBroker) -> None:
    try:
        first = broker.attach(job("a", REF))
        assert first is not None and broker.proc is not None
        os.close(first)
        broker.proc.kill()
        broker.proc.wait()
        again = broker.attach(job("b", REF))
        assert again is not None
        assert ask(again, REF)[REF]["value"] == VALUES["password"]
    finally:
        broker.close()


def test_broker_dies_with_a_sigkilled_loom(tmp_path: Path, vault: Path) -> None:
    repo = make_repo(tmp_path / "repo", f"""
    version: v1
    stages: [ci]
    slow:
      stage: ci
      target: linux
      secrets:
        PW: {{ref: "{REF}"}}
      script: ['touch "$CI_PROJECT_DIR/../../started-$LOOM_RUN_ID"; sleep 60']
    """, git=False)
    keepass_config(repo, vault)
    run = Background(repo, "run", "--local", env=loom_env(HOME=str(tmp_path), KP_PASSWORD=PASSWORD))
    deadline = time.monotonic() + 60
    while not list((repo / ".loom" / ".runtime").glob("started-*")):
        assert run.proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    loom = psutil.Process(run.proc.pid)
    [broker] = [p for p in loom.children() if "workers.secrets.broker" in " ".join(p.cmdline())]
    run.signal(signal.SIGKILL)
    run.finish()
    broker.wait(10)  # PR_SET_PDEATHSIG, and EOF on its control socket
    assert not broker.is_running()
    assert run_loom(repo, "cache", "list", env=loom_env(HOME=str(tmp_path))).code == 0  # reaps the dead run
