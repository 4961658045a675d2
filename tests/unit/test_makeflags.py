"""MAKEFLAGS as GNU make reads it (loomrun/makeflags.py), checked against the real make 4.3 where a
question is make's to answer: which of several --jobserver-auth words it uses."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from loomrun.makeflags import jobs_word, jobserver_auth, with_jobserver, without_jobserver


@pytest.mark.parametrize(("makeflags", "auth", "jobs"), [
    ("", None, None),
    (" -j2 --jobserver-auth=3,4", "3,4", "-j2"),
    ("ks -j --jobserver-auth=fifo:/tmp/a --jobserver-auth=5,6 -- X=--jobserver-auth=9,9", "5,6", "-j"),
    ("--jobserver-fds=7,8 -j", "7,8", "-j"),
    ("s -- -j4", None, None),
])
def test_the_last_auth_word_counts_and_variables_are_not_options(makeflags: str, auth: str | None,
                                                                  jobs: str | None) -> None:
    assert jobserver_auth(makeflags) == auth
    assert jobs_word(makeflags) == jobs


def test_our_words_replace_the_old_ones_and_keep_the_rest() -> None:
    assert with_jobserver("", 3, ["fifo:/p", "5,6"]) == "-j3 --jobserver-auth=fifo:/p --jobserver-auth=5,6"
    assert with_jobserver("ks -j8 --jobserver-auth=3,4 --no-print-directory -- CC=gcc", 0, ["5,6"]) == \
        "ks -j --jobserver-auth=5,6 --no-print-directory -- CC=gcc"
    assert without_jobserver(" -j2 --jobserver-auth=3,4 -- A=1") == "-j2 -- A=1"
    assert without_jobserver("-j2 --jobserver-fds=3,4", drop_jobs=True) == ""


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_uses_the_fd_form_we_put_last_and_ignores_the_fifo_before_it(tmp_path: Path) -> None:
    """make 4.3 stops at a fifo: form it cannot read when it is the last word; first, it is ignored."""
    (tmp_path / "Makefile").write_text("all: a b\na b:\n\t@echo $@\n")
    r, w = os.pipe()
    os.write(w, b"+")
    try:
        env = {**os.environ, "MAKEFLAGS": with_jobserver("", 2, [f"fifo:{tmp_path}/none", f"{r},{w}"])}
        out = subprocess.run(["make", "-s"], cwd=tmp_path, env=env, pass_fds=(r, w), capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0 and sorted(out.stdout.split()) == ["a", "b"], out.stderr
        assert "jobserver" not in out.stderr
        os.set_blocking(r, False)
        assert os.read(r, 10) == b"+"  # the token came back
    finally:
        os.close(r)
        os.close(w)
