"""Secrets in a Docker job (spec §7.3): a `file: true` secret is a read-only bind mount of the 0600
host file at /run/loom/secrets/<NAME>; a `file: false` one is a variable; both redacted; the host
file is gone when the job ends. A real engine and the real `loom run --local`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.docker.helpers import BUSYBOX, labelled
from tests.process.runner import loom_env, make_repo, run_loom
from tests.secrets.conftest import PASSWORD, VALUES, assert_nowhere, keepass_config, make_vault

pytestmark = pytest.mark.docker


def test_file_secret_is_a_read_only_bind_mount(tmp_path: Path, engine: Any) -> None:
    vault = make_vault(tmp_path / "main.kdbx")
    digest = hashlib.sha256(VALUES["password"].encode()).hexdigest()
    script = [
        'echo "path=$PW"',
        f'[ "$(sha256sum < "$PW" | cut -c1-64)" = "{digest}" ] && echo content-ok',
        'grep " /run/loom/secrets/PW " /proc/mounts | grep -q "[ ,]ro[ ,]" && echo mounted-ro',
        'if (echo x > "$PW") 2>/dev/null; then echo WRITABLE; else echo write-refused; fi',
        'echo "value=$(cat "$PW") token=$TOKEN"',
    ]
    repo = make_repo(tmp_path / "repo", f"""
version: v1
stages: [ci]
use:
  stage: ci
  target: linux
  image: {BUSYBOX}
  secrets:
    PW: {{ref: "keepass://local/main#services/loom/deploy:password"}}
    TOKEN: {{ref: "env://APP_TOKEN", file: false}}
  script: {json.dumps(script)}
""", git=False)
    keepass_config(repo, vault)
    home = tmp_path / "home"
    home.mkdir()
    result = run_loom(repo, "run", "--local", "--stream",
                      env=loom_env(HOME=str(home), KP_PASSWORD=PASSWORD, APP_TOKEN="docker-tok-3e1"))
    assert result.code == 0, result.stderr
    assert labelled(engine, result.receipt["run_id"]) == []
    assert [result.step_lines("use", i) for i in range(1, 6)] == [
        ["path=/run/loom/secrets/PW"], ["content-ok"], ["mounted-ro"], ["write-refused"],
        ["value=[REDACTED:SECRET_PW] token=[REDACTED:SECRET_TOKEN]"]]
    runtime = repo / ".loom" / ".runtime"
    assert not list((runtime / "tmp").rglob("PW"))  # the host file went with the job
    for value in (VALUES["password"], "docker-tok-3e1"):
        assert_nowhere(value, runtime, result.stdout, result.stderr, skip=())
