"""`loom run --remote` flag handling (spec §1.1, §12). Runs in the pytest process; real `loom`
processes, no cluster needed: these fail before any connection is tried."""

from __future__ import annotations

from pathlib import Path

from tests.process.runner import loom_env, make_repo, run_loom

WORKFLOW = """
    version: v1
    stages: [s]
    one:
      stage: s
      target: linux
      script: ["true"]
"""


def test_local_and_remote_are_mutually_exclusive(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    res = run_loom(repo, "run", "--local", "--remote", "127.0.0.1:1")
    assert res.code == 2
    assert "--local and --remote are mutually exclusive" in res.stderr
    assert not (repo / ".loom/.runtime/receipts").exists()


def test_remote_without_an_address_anywhere_is_one_clear_line(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    env = {k: v for k, v in loom_env().items() if k != "RAY_ADDRESS"}
    res = run_loom(repo, "run", "--remote", env=env)
    assert res.code == 1
    assert res.stderr == ("loom run: --remote needs an address: give one, or set RAY_ADDRESS or "
                          "remote.ray.address in the runtime config\n")


def test_an_unreachable_cluster_fails_the_run_with_a_receipt(tmp_path: Path) -> None:
    """Port 1 of the loopback takes no connection: one line, exit 1, a loom-run-remote receipt."""
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    res = run_loom(repo, "run", "--remote", "127.0.0.1:1")
    assert res.code == 1
    why = "cannot connect to the Ray cluster at 127.0.0.1:1: Connection refused"
    assert res.stderr.splitlines()[-1] == f"loom run: {why}"
    receipt = res.receipt
    assert receipt["kind"] == "loom-run-remote" and receipt["run_id"].startswith("loom-run-remote-")
    assert receipt["remote"] == {"engine": "ray", "address": "127.0.0.1:1", "nodes": []}
    assert receipt["error"] == why


def test_an_invalid_workflow_fails_a_remote_run_like_a_local_one(tmp_path: Path) -> None:
    """The gateway started early (the address is on the command line) is ended without a connection."""
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [s]\nbroken:\n  stage: s\n")
    res = run_loom(repo, "run", "--remote", "127.0.0.1:1")
    assert res.code == 1
    assert 'missing required key "script"' in res.stderr or "script" in res.stderr, res.stderr
    receipt = res.receipt
    assert receipt["kind"] == "loom-run-remote" and receipt["workflow_errors"]
    assert receipt["remote"] == {"engine": "ray", "address": "127.0.0.1:1", "nodes": []}


REFUSED = ("Ray Client addresses are not supported; run loom on a node of the cluster and give the head's "
           "host:port (e.g. 10.0.0.5:6379)")


def test_a_ray_client_address_is_refused_in_one_line_wherever_it_comes_from(tmp_path: Path) -> None:
    """`ray://` (Ray Client) is refused before any run starts: from the flag, from RAY_ADDRESS, and
    from the runtime config (there even `loom config show` says so: it is loom's own setting)."""
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    env = {k: v for k, v in loom_env().items() if k != "RAY_ADDRESS"}
    flag = run_loom(repo, "run", "--remote", "ray://head:10001", env=env)
    assert (flag.code, flag.stderr) == (1, f"loom run: cannot use ray://head:10001 (--remote): {REFUSED}\n")
    from_env = run_loom(repo, "run", "--remote", env={**env, "RAY_ADDRESS": "ray://head:10001"})
    assert (from_env.code, from_env.stderr) == (1, f"loom run: cannot use ray://head:10001 (RAY_ADDRESS): {REFUSED}\n")
    assert not (repo / ".loom/.runtime/receipts").exists()
    # RAY_ADDRESS is Ray's own variable: a local run does not care what it holds
    local = run_loom(repo, "run", "--local", env={**env, "RAY_ADDRESS": "ray://head:10001"})
    assert local.code == 0, local.stderr
    config = repo / ".loom/config.yml"
    config.write_text("remote: {ray: {address: 'ray://head:10001'}}\n")
    from_file = run_loom(repo, "run", "--remote", env=env)
    assert from_file.code == 1
    assert from_file.stderr.splitlines() == [
        f'loom run: cannot use ray://head:10001 ("remote.ray.address" in {config}): {REFUSED}']
    shown = run_loom(repo, "config", "show", env=env)
    assert shown.code != 0 and f'"remote.ray.address" in {config}' in shown.stderr
    assert len(shown.stderr.splitlines()) == 1
