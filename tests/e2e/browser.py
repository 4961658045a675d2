"""Debian's chromium, headless, for tests of the HTML report. Runs in the pytest process.

Every run gets a fresh profile folder inside the test's tmp_path and its own session; whatever of
that session is still alive when chromium returns is killed, so no chromium process outlives a
test. Without chromium the test skips (scripts/test.sh installs it; with CI=true a skip fails).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    return path


def run_chromium(args: list[str], tmp_path: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _kill_session(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_session(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    left = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == proc.pid:
                left.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    for p in left:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
