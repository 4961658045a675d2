"""The session's Ray cluster for the remote tests (spec §12). Runs in the pytest process.

Started once, on first use: a head on 127.0.0.1 without CPUs (the machine `loom` runs on) and two
nodes, `a` on 127.0.0.2 and `b` on 127.0.0.3, two CPUs each, inside a loopback-only network
namespace (`cluster.py`). Fault tests add nodes of their own and kill them. At the end every Ray
process of the session is stopped, and the session fails if one had to be killed twice.

Needs root (the namespace), `unshare`/`nsenter`/`ip`, and Ray (`pip install '.[ray]'`): without them
the tests skip, which `CI=true` turns into failures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.process.runner import LOOM, Result, loom_env
from tests.remote.cluster import RAY, Cluster


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the remote tests need root (a network namespace of their own)"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"the remote tests need {tool}"
    if not Path(RAY).exists():
        return "Ray is not installed: pip install '.[ray]'"
    return None


@pytest.fixture(scope="session")
def cluster(_leakcheck_session: object) -> Iterator[Cluster]:
    why = _missing()
    if why is not None:
        pytest.skip(why)
    c = Cluster()
    try:
        c.start_head()
        c.add_node("127.0.0.2", "a")
        c.add_node("127.0.0.3", "b")
    except BaseException:
        c.stop()
        raise
    yield c
    left = c.stop()
    assert not left, f"Ray processes that survived a first SIGKILL: {left}"


class Remote:
    """`loom` commands run inside the cluster's namespace."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def argv(self, args: Sequence[str]) -> list[str]:
        return self.cluster.cmd([*LOOM, *args])

    def env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """The test environment, with Ray's own files (the driver's: default $TMPDIR/ray) kept in the
        cluster's folder, which goes at the end of the session."""
        return {**(env or loom_env()), "RAY_TMPDIR": str(self.cluster.temp), "RAY_AUTH_MODE": "disabled"}

    def run(self, repo: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> Result:
        proc = subprocess.run(self.argv(args), cwd=repo, capture_output=True, text=True, timeout=timeout,
                              env=self.env(env))
        assert "Traceback" not in proc.stderr, proc.stderr
        return Result(proc.returncode, proc.stdout, proc.stderr, repo)

    def popen(self, repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(args), cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env(env))


@pytest.fixture
def remote(cluster: Cluster) -> Remote:
    return Remote(cluster)
