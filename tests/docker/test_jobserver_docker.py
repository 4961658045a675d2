"""The jobserver for Docker jobs (spec §13), through the real `loom run --local` and a real engine:
the run's fifo bind-mounted where the image's make reads the fifo form (4.4 or newer), and a line
in the provider section otherwise.

The test images are busybox (no make). The "make 4.4" image is built by the run itself from
busybox with a `make` that says it is GNU Make 4.4.1 and, called with a target, acts as a jobserver
client by hand: it takes a token from the fifo `MAKEFLAGS` names and gives it back.
"""

# ruff: noqa: F811  (fixtures imported from test_run_docker are named as the tests' parameters)
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.docker.helpers import BUSYBOX
from tests.docker.test_run_docker import (  # noqa: F401  (the fixtures are used by name)
    HEAD,
    built_image,
    checked,
    engine_clean,
    env,
    home,
    job,
    section_text,
)
from tests.process.runner import make_repo, run_loom

pytestmark = pytest.mark.docker

FAKE_MAKE = """#!/bin/sh
if [ "$1" = --version ]; then echo "GNU Make 4.4.1"; echo "Built for x86_64-pc-linux-gnu"; exit 0; fi
fifo=$(echo "$MAKEFLAGS" | tr ' ' '\\n' | sed -n 's/^--jobserver-auth=fifo://p' | tail -n 1)
[ -p "$fifo" ] || { echo "no fifo in MAKEFLAGS: $MAKEFLAGS"; exit 2; }
exec 3<>"$fifo"
token=$(dd bs=1 count=1 <&3 2>/dev/null)
echo "took [$token] from $fifo"
printf '%s' "$token" >&3
"""


def test_an_image_with_make_4_4_draws_from_the_runs_pool_through_the_mounted_fifo(
        tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str], built_image: str) -> None:
    repo = tmp_path / "repo"
    (repo / "img").mkdir(parents=True)
    (repo / "img" / "make").write_text(FAKE_MAKE)
    (repo / "img" / "Dockerfile").write_text(f"FROM {BUSYBOX}\nCOPY make /bin/make\nRUN chmod 755 /bin/make\n")
    image = f"\n    name: {built_image}\n    build: {{context: img, dockerfile: Dockerfile}}"
    make_repo(repo, HEAD + job("built", ['echo "MAKEFLAGS=$MAKEFLAGS"', "make all"], image=image))
    result = checked(run_loom(repo, "run", "--local", "--jobs", "2", env=env, timeout=180), engine_clean, engine)
    assert result.code == 0, result.stderr
    lines = result.step_lines("built", 1) + result.step_lines("built", 2)
    assert lines == ["MAKEFLAGS=-j2 --jobserver-auth=fifo:/run/loom-jobserver",
                     "took [+] from /run/loom-jobserver"]  # the run's second slot, through the mount
    assert "jobserver: make 4.4 draws from the run's pool (/run/loom-jobserver)" in section_text(result, "built",
                                                                                                   "provider")


def test_an_image_without_make_4_4_runs_without_a_jobserver_and_says_so(
        tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]) -> None:
    repo = make_repo(tmp_path / "repo", HEAD + job("plain", ['echo "MAKEFLAGS=[$MAKEFLAGS]"']))
    result = checked(run_loom(repo, "run", "--local", env=env), engine_clean, engine)
    assert result.code == 0, result.stderr
    assert result.step_lines("plain", 1) == ["MAKEFLAGS=[]"]
    assert "no jobserver: the image has no GNU make" in section_text(result, "plain", "provider")
