"""`loom run --remote` on a real multi-node Ray cluster (spec §12). Runs in the pytest process; the
cluster, `loom`, its gateway and the jobs are real processes in a loopback-only network namespace.

After every run: no process carrying the run's id is left on any node (steps, guards), and the
nodes' work folders are gone (the leak check sees them: they live under the session's TMPDIR).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.process.runner import KILLED_DAEMON_STEP, Result, load, make_repo, numbered_lines, run_processes
from tests.remote.cluster import Cluster
from tests.remote.conftest import Remote

pytestmark = pytest.mark.timeout(300)


def node_leftovers(run_id: str, wait_s: float = 10.0) -> list[str]:
    """Processes of the run still alive on any node (its steps by LOOM_RUN_ID, its guards by their
    command line), after giving them `wait_s` to go."""
    deadline = time.monotonic() + wait_s
    while True:
        found = [f"{p.pid} {p.info['cmdline']}" for p in psutil.process_iter(["cmdline", "status", "environ"])
                 if p.info["status"] != psutil.STATUS_ZOMBIE
                 and ((p.info["environ"] or {}).get("LOOM_RUN_ID") == run_id
                      or (run_id in " ".join(p.info["cmdline"] or []) and "workers.remote.guard" in p.info["cmdline"]))]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def wait_for(path: Path, proc: object = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def finish(popen: object, repo: Path, timeout: float = 120) -> Result:
    import subprocess

    assert isinstance(popen, subprocess.Popen)
    out, err = popen.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return Result(popen.returncode, out, err, repo)


def test_jobs_land_on_nodes_by_pool_and_artifacts_cross_nodes(tmp_path: Path, remote: Remote,
                                                               cluster: Cluster) -> None:
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [build, test]
        build:
          stage: build
          target: linux
          runner_pool: a
          script: ["mkdir -p dist && echo built-on-a > dist/out.txt", "echo to-stderr >&2", "pwd",
                   'echo "[$MAKEFLAGS]"']
          artifacts: {{paths: [dist]}}
        test:
          stage: test
          target: linux
          runner_pool: b
          script:
            - cat dist/out.txt
            - cat README
            # the actor is a subreaper: a daemon the step killed is reaped at once (not a zombie
            # that `kill -0` sees until the job ends)
            - {KILLED_DAEMON_STEP}
    """)
    (repo / "README").write_text("from the snapshot\n")
    res = remote.run(repo, "run", "--remote", cluster.address)
    assert res.code == 0, res.stderr
    receipt = res.receipt
    run_id = receipt["run_id"]
    assert run_id.startswith("loom-run-remote-") and receipt["kind"] == "loom-run-remote"
    assert receipt["pipeline_id"].startswith("loom-remote-")
    build, test = res.job_manifest("build")["node"], res.job_manifest("test")["node"]
    assert (build["address"], build["labels"]["loom.pool"]) == ("127.0.0.2", "a")
    assert (test["address"], test["labels"]["loom.pool"]) == ("127.0.0.3", "b")
    assert build["id"] != test["id"]
    block = receipt["remote"]
    assert block["engine"] == "ray" and block["address"] == cluster.address
    assert {n["id"]: n["jobs"] for n in block["nodes"]} == {build["id"]: ["build"], test["id"]: ["test"]}
    # the artifact made on node a, stored locally, restored into the job on node b
    assert [a["path"] for a in res.job_manifest("build")["artifacts"]] == ["dist/out.txt"]
    assert (res.logs_dir / "jobs/build/artifacts/dist/out.txt").read_text() == "built-on-a\n"
    assert res.step_lines("test", 1) == ["built-on-a"]
    assert res.step_lines("test", 2) == ["from the snapshot"]
    assert res.step_lines("build", 2) == ["to-stderr"]
    workdir = res.step_lines("build", 3)[0]
    assert "/loom-remote/" in workdir and run_id in workdir  # a private copy on the node, not the snapshot
    # no jobserver: a node cannot reach a fifo on loom's machine (spec §13 is about one host)
    assert res.step_lines("build", 4) == ["[]"] and "jobserver" not in receipt
    assert not node_leftovers(run_id)


def test_three_million_lines_from_a_node_every_line_in_order(tmp_path: Path, remote: Remote,
                                                             cluster: Cluster) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        seq:
          stage: s
          target: linux
          runner_pool: a
          script: ["seq 1 3000000"]
    """)
    res = remote.run(repo, "run", "--remote", cluster.address, timeout=240)
    assert res.code == 0, res.stderr
    step = res.logs_dir / "jobs/seq/user/script/01"
    assert numbered_lines(step / "events.jsonl") == 3_000_000
    assert load(step / "summary.json")["output_lines"] == 3_000_000
    assert not node_leftovers(res.receipt["run_id"])


def test_infeasible_pool_fails_at_once_naming_it(tmp_path: Path, remote: Remote, cluster: Cluster) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        nowhere:
          stage: s
          target: linux
          runner_pool: gpu
          script: ["true"]
        too_big:
          stage: s
          target: linux
          runner_pool: a
          limits: {cpus: 64}
          script: ["true"]
        fine:
          stage: s
          target: linux
          runner_pool: b
          script: ["true"]
    """)
    res = remote.run(repo, "run", "--remote", cluster.address)
    assert res.code == 1
    nowhere, too_big = res.job_summary("nowhere"), res.job_summary("too_big")
    assert nowhere["failure_kind"] == "provider_error"
    assert 'pool "gpu"' in nowhere["message"] and "loom.pool=gpu" in nowhere["message"]
    assert too_big["failure_kind"] == "provider_error"
    assert 'pool "a"' in too_big["message"] and "64 CPU" in too_big["message"]
    assert res.job_summary("fine")["status"] == "success"


def test_a_target_no_node_offers_fails_at_once_as_infeasible(tmp_path: Path, remote: Remote,
                                                             cluster: Cluster) -> None:
    """Pool "elsewhere" has a live node, but labelled `loom.target=other`: a `target: linux` job there
    could never be placed (Ray would keep it pending forever); it fails at once, the run goes on."""
    cluster.add_node("127.0.0.8", "elsewhere", target="other")
    try:
        repo = make_repo(tmp_path / "repo", """
            version: v1
            stages: [s]
            wrong_os:
              stage: s
              target: linux
              runner_pool: elsewhere
              script: ["true"]
            fine:
              stage: s
              target: linux
              runner_pool: a
              script: ["true"]
        """)
        res = remote.run(repo, "run", "--remote", cluster.address)
    finally:
        cluster.kill_node("127.0.0.8")
    assert res.code == 1, res.stderr
    wrong = res.job_summary("wrong_os")
    assert wrong["failure_kind"] == "provider_error"
    assert wrong["message"] == ('no live node in pool "elsewhere" '
                                "(no node carries loom.pool=elsewhere, loom.target=linux)")
    assert not (res.logs_dir / "jobs/wrong_os/user").exists()  # no step ever started
    assert res.job_summary("fine")["status"] == "success"


def _sleeper(repo_root: Path, pool: str, marker: Path) -> Path:
    return make_repo(repo_root, f"""
        version: v1
        stages: [s]
        long:
          stage: s
          target: linux
          runner_pool: {pool}
          script: ["touch {marker} && sleep 300"]
    """)


def _node_running(cluster: Cluster, run_id: str, ips: tuple[str, ...]) -> str:
    """Which of `ips` runs the run's job: the node whose raylet has the job's step below it."""
    for ip in ips:
        for proc in cluster.node_processes(ip):
            try:
                if proc.environ().get("LOOM_RUN_ID") == run_id:
                    return ip
            except psutil.Error:
                continue
    raise AssertionError(f"no node of {ips} runs {run_id}")


def _actor_homes(run_id: str) -> set[str]:
    """The folders (`.../<run_id>/actor-<pid>`) of the run's node actors alive now, by their guards."""
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "workers.remote.guard" in cmd and run_id in cmd:
            found.add(cmd[-1])
    return found


def test_a_node_that_dies_fails_its_job_as_worker_crashed(tmp_path: Path, remote: Remote,
                                                          cluster: Cluster) -> None:
    """Two live nodes in the job's pool: the one running it is killed mid-step; the other could take
    the job, and never does (spec §12: Ray's retries are off, a retry is never silent). The step
    appends to a file of this machine each time it starts."""
    ips = ("127.0.0.4", "127.0.0.6")
    for ip in ips:
        cluster.add_node(ip, "victim-crash")
    starts = tmp_path / "starts"
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        long:
          stage: s
          target: linux
          runner_pool: victim-crash
          script: ["echo start >> {starts} && sleep 300"]
    """)
    popen = remote.popen(repo, "run", "--remote", cluster.address)
    try:
        wait_for(starts)
        run_id = next(p.name[:-5] for p in (repo / ".loom/.runtime/runs").glob("*.lock"))
        victim = _node_running(cluster, run_id, ips)
        survivor = next(ip for ip in ips if ip != victim)
        actors = _actor_homes(run_id)
        cluster.kill_node(victim)
        killed = time.monotonic()
        while popen.poll() is None:  # an actor Ray restarted elsewhere would start a guard of its own
            actors |= _actor_homes(run_id)
            time.sleep(0.05)
        res = finish(popen, repo)
        print(f"node crash to the end of loom: {time.monotonic() - killed:.2f}s")
        assert cluster.node_processes(survivor)  # the other node of the pool was up all along
    finally:
        for ip in ips:
            cluster.kill_node(ip)
        if popen.poll() is None:
            popen.kill()
    assert res.code == 1
    summary, manifest = res.job_summary("long"), res.job_manifest("long")
    assert summary["failure_kind"] == "worker_crashed"
    assert summary["message"] == f"node lost: {manifest['node']['id']}"
    assert manifest["node"]["address"] == victim
    assert manifest["failing_section"] == "user"
    assert starts.read_text() == "start\n"  # started once: not again on the surviving node
    assert len(actors) == 1, actors  # and its actor was not restarted (Ray's max_restarts)
    assert not node_leftovers(res.receipt["run_id"])


def test_a_node_that_hangs_fails_its_job_as_worker_crashed(tmp_path: Path, remote: Remote,
                                                           cluster: Cluster) -> None:
    """The node is SIGSTOPped mid-step. `loom`'s gRPC keepalives (which may notice a hung node too,
    in ~4-8 s) are pushed out of reach here, and Ray's own health check takes longer than loom's
    watchdog: the job is reported by the watchdog, whose message is the only one saying `no answer`."""
    from tests.process.runner import loom_env

    cluster.add_node("127.0.0.5", "victim-hang")
    marker = tmp_path / "started"
    repo = _sleeper(tmp_path / "repo", "victim-hang", marker)
    popen = remote.popen(repo, "run", "--remote", cluster.address,
                         env=loom_env(RAY_grpc_client_keepalive_time_ms="3600000",
                                      RAY_grpc_client_keepalive_timeout_ms="3600000"))
    frozen: list[psutil.Process] = []
    try:
        wait_for(marker)
        frozen = cluster.freeze_node("127.0.0.5")
        stopped = time.monotonic()
        res = finish(popen, repo)
        print(f"node SIGSTOPped to the end of loom: {time.monotonic() - stopped:.2f}s")
    finally:
        cluster.kill_node("127.0.0.5")
        for proc in frozen:  # what the node kill did not reach (the job's steps) wakes to its guard
            try:
                proc.send_signal(signal.SIGCONT)
            except psutil.Error:
                continue
        if popen.poll() is None:
            popen.kill()
    assert res.code == 1
    summary, manifest = res.job_summary("long"), res.job_manifest("long")
    assert summary["failure_kind"] == "worker_crashed"
    assert summary["message"] == f"node lost: {manifest['node']['id']} (no answer for 8s)"
    assert not node_leftovers(res.receipt["run_id"])


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_stops_remote_jobs_and_leaves_nothing(tmp_path: Path, remote: Remote, cluster: Cluster,
                                                           sig: int, code: int) -> None:
    marker = tmp_path / "started"
    repo = _sleeper(tmp_path / "repo", "a", marker)
    popen = remote.popen(repo, "run", "--remote", cluster.address)
    try:
        wait_for(marker)
        popen.send_signal(sig)
        res = finish(popen, repo)
    finally:
        if popen.poll() is None:
            popen.kill()
    assert res.code == code
    receipt = res.receipt
    assert receipt["error"] == f"interrupted by {signal.Signals(sig).name}"
    assert res.job_summary("long")["status"] == "canceled"
    assert not run_processes(receipt["run_id"])  # the job's processes on the node: gone when loom exits
    assert not node_leftovers(receipt["run_id"])


def test_loom_killed_takes_its_remote_jobs_along(tmp_path: Path, remote: Remote, cluster: Cluster) -> None:
    marker = tmp_path / "started"
    repo = _sleeper(tmp_path / "repo", "b", marker)
    popen = remote.popen(repo, "run", "--remote", cluster.address)
    try:
        wait_for(marker)
        run_id = next(p.name[:-5] for p in (repo / ".loom/.runtime/runs").glob("*.lock") if p.suffix == ".lock")
        assert run_processes(run_id)
        popen.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        popen.communicate(timeout=60)
        left = node_leftovers(run_id, wait_s=30)
        print(f"loom SIGKILLed to the last remote process gone: {time.monotonic() - killed:.2f}s")
    finally:
        if popen.poll() is None:
            popen.kill()
    assert not left
    # the next loom command in the repo marks the run abandoned (the local part of the contract)
    res = remote.run(repo, "logs")
    assert "abandoned" in (repo / f".loom/.runtime/receipts/{run_id}.json").read_text(), res.stderr


def _poisonable_on(pool: str) -> str:
    from tests.e2e.test_cache_run import POISONABLE

    return POISONABLE.replace("  target: linux\n", f"  target: linux\n  runner_pool: {pool}\n")


def test_cache_entries_come_back_and_cache_diff_works_remotely(tmp_path: Path, remote: Remote,
                                                              cluster: Cluster) -> None:
    from tests.e2e.test_cache_run import _poison

    repo = make_repo(tmp_path / "repo", _poisonable_on("a"))
    first = remote.run(repo, "run", "--remote", cluster.address, "-v")
    assert first.code == 0, first.stderr
    assert 'job "build": cache deps-v1: miss' in first.stderr
    assert list((repo / ".loom/.runtime/cache/entries").iterdir())  # saved from the node into the local store
    second = remote.run(repo, "run", "--remote", cluster.address, "-v")
    assert 'job "build": cache deps-v1: hit' in second.stderr  # restored into the job on the node
    _poison(repo)
    diff = remote.run(repo, "run", "--remote", cluster.address, "--cache-diff")
    assert diff.code == 1, diff.stderr
    assert 'cache-diff: job "build" diverged with the cache on; quarantined deps-v1' in diff.stderr
    block = diff.receipt["cache_diff"]
    assert block["quarantined"] == ["deps-v1"]
    assert all(p["run_id"].startswith("loom-run-remote-") for p in block["passes"])
    assert diff.receipt["kind"] == "loom-run-remote"
    for run_id in (first.receipt["run_id"], second.receipt["run_id"], *(p["run_id"] for p in block["passes"])):
        assert not node_leftovers(run_id)


def test_a_docker_job_runs_through_the_nodes_engine(tmp_path: Path, remote: Remote, cluster: Cluster) -> None:
    _docker_api()
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        boxed:
          stage: s
          target: linux
          runner_pool: b
          image: loom-test/busybox
          script: ["cat README", "echo in-a-container > made.txt", "test -f /.dockerenv && echo docker"]
          artifacts: {paths: [made.txt]}
    """)
    (repo / "README").write_text("seeded from the node's copy\n")
    res = remote.run(repo, "run", "--remote", cluster.address)
    assert res.code == 0, res.stderr
    assert res.job_manifest("boxed")["node"]["labels"]["loom.pool"] == "b"
    assert res.step_lines("boxed", 1) == ["seeded from the node's copy"]
    assert res.step_lines("boxed", 3) == ["docker"]
    assert (res.logs_dir / "jobs/boxed/artifacts/made.txt").read_text() == "in-a-container\n"
    assert res.job_summary("boxed")["provider"] == "docker"
    assert not node_leftovers(res.receipt["run_id"])


def _docker_api() -> Any:
    import shutil

    if shutil.which("docker") is None and not Path("/var/run/docker.sock").exists():
        pytest.skip("no Docker engine")
    import docker

    return docker.APIClient(base_url="unix:///var/run/docker.sock", timeout=30)


def _running_run(popen: Any, repo: Path, job: str, text: str, timeout: float = 120) -> str:
    """The id of the run in `repo` once `job`'s first step has printed `text`."""
    deadline = time.monotonic() + timeout
    while True:
        if popen.poll() is not None:
            raise AssertionError(f"loom ended early ({popen.returncode}): {popen.communicate()}")
        locks = list((repo / ".loom/.runtime/runs").glob("*.lock")) if (repo / ".loom/.runtime/runs").is_dir() else []
        if locks:
            run_id = locks[0].name[: -len(".lock")]
            events = repo / ".loom/.runtime/logs" / run_id / "jobs" / job / "user/script/01/events.jsonl"
            if events.exists() and text in events.read_text():
                return run_id
        assert time.monotonic() < deadline, f"{job} never printed {text!r}"
        time.sleep(0.05)


def _actor_of(run_id: str) -> psutil.Process:
    """The node actor (a Ray worker process) running the run's one job: its guard's folder names it
    (`.../<run_id>/actor-<pid>`)."""
    homes = _actor_homes(run_id)
    assert len(homes) == 1, homes
    return psutil.Process(int(homes.pop().rsplit("actor-", 1)[1]))


def test_a_docker_job_whose_actor_dies_has_its_container_removed_by_the_nodes_guard(
        tmp_path: Path, remote: Remote, cluster: Cluster) -> None:
    """The actor is SIGKILLed mid-step. The job's container lives on the node's engine, which the
    local side never reaps in a remote run and no later `loom` command reaps here: only the node's
    guard can remove it (before the fix it stayed, exited, until some later run's reaper)."""
    from tests.docker.helpers import labelled  # the run's objects on the engine (the nodes' and this machine's)

    api = _docker_api()
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        boxed:
          stage: s
          target: linux
          runner_pool: a
          image: loom-test/busybox
          script: ["echo started && sleep 300"]
    """)
    popen = remote.popen(repo, "run", "--remote", cluster.address)
    try:
        run_id = _running_run(popen, repo, "boxed", "started")
        assert [o for o in labelled(api, run_id) if o.startswith("container ")]
        _actor_of(run_id).kill()
        res = finish(popen, repo)
        left = labelled(api, run_id)
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = labelled(api, run_id)
    finally:
        if popen.poll() is None:
            popen.kill()
    assert res.code == 1, res.stderr
    summary, manifest = res.job_summary("boxed"), res.job_manifest("boxed")
    assert summary["failure_kind"] == "worker_crashed", res.stderr
    assert summary["message"] == f"node lost: {manifest['node']['id']}", res.stderr
    assert not left
    assert not node_leftovers(run_id)


def test_limits_and_timeouts_are_enforced_on_the_node(tmp_path: Path, remote: Remote, cluster: Cluster) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        hog:
          stage: s
          target: linux
          runner_pool: a
          limits: {memory: 64m}
          script:
            - echo start
            - python3 -c "import time; b=[]; [b.append(bytearray(8 << 20)) or time.sleep(0.02) for _ in range(200)]"
        slow:
          stage: s
          target: linux
          runner_pool: b
          timeout: 2s
          script: ["sleep 300"]
    """)
    res = remote.run(repo, "run", "--remote", cluster.address)
    assert res.code == 1
    hog, slow = res.job_summary("hog"), res.job_summary("slow")
    assert hog["failure_kind"] == "memory_limit", hog
    assert res.step_lines("hog", 1) == ["start"]
    assert slow["failure_kind"] == "timeout" and slow["message"] == "timeout after 2s"
    assert not node_leftovers(res.receipt["run_id"])


def test_secrets_reach_the_node_and_are_redacted(tmp_path: Path, remote: Remote, cluster: Cluster) -> None:
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        secretive:
          stage: s
          target: linux
          runner_pool: a
          secrets:
            TOKEN: {ref: "env://APP_TOKEN", file: false}
            KEYFILE: {ref: "env://APP_TOKEN"}
          script:
            - echo "token=$TOKEN"; echo "file=$(cat "$KEYFILE") mode=$(stat -c %a "$KEYFILE")"; echo "at $KEYFILE"
    """)
    from tests.process.runner import loom_env

    res = remote.run(repo, "run", "--remote", cluster.address, env=loom_env(APP_TOKEN="s3cr3t-value"))
    assert res.code == 0, res.stderr
    lines = res.step_lines("secretive", 1)
    assert lines[:2] == ["token=[REDACTED:SECRET_TOKEN]", "file=[REDACTED:SECRET_TOKEN] mode=600"]
    assert "/loom-remote/" in lines[2]  # the node's own copy of the file, not this machine's
    assert "s3cr3t-value" not in (res.logs_dir / "jobs/secretive/user/script/01/events.jsonl").read_text()
    assert not node_leftovers(res.receipt["run_id"])


def test_a_job_waiting_for_a_busy_pool_waits_and_a_cancel_ends_the_wait(tmp_path: Path, remote: Remote,
                                                                       cluster: Cluster) -> None:
    marker = tmp_path / "started"
    repo = make_repo(tmp_path / "repo", f"""
        version: v1
        stages: [s]
        first:
          stage: s
          target: linux
          runner_pool: a
          limits: {{cpus: 2}}
          script: ["touch {marker} && sleep 300"]
        second:
          stage: s
          target: linux
          runner_pool: a
          limits: {{cpus: 2}}
          script: ["touch {marker} && sleep 300"]
    """)
    popen = remote.popen(repo, "run", "--remote", cluster.address, "-j", "2")
    try:
        wait_for(marker)
        time.sleep(1.0)  # the second job is now waiting for node a's two CPUs (feasible: no error)
        assert popen.poll() is None
        popen.send_signal(signal.SIGINT)
        res = finish(popen, repo)
    finally:
        if popen.poll() is None:
            popen.kill()
    assert res.code == 130
    assert [res.job_summary(j)["status"] for j in ("first", "second")] == ["canceled", "canceled"]
    ran = [j for j in ("first", "second") if (res.logs_dir / f"jobs/{j}/user").exists()]
    assert len(ran) == 1  # the other one never got a node: it waited, and the cancel ended the wait
    assert not node_leftovers(res.receipt["run_id"])


def test_jobs_that_each_need_a_whole_node_take_turns(tmp_path: Path, remote: Remote, cluster: Cluster) -> None:
    """The second job waits for node b's two CPUs, which the first job's actor holds; once that job
    is done, its (now idle) actor takes the second job rather than sitting on the CPUs."""
    repo = make_repo(tmp_path / "repo", """
        version: v1
        stages: [s]
        one: {stage: s, target: linux, runner_pool: b, limits: {cpus: 2}, script: ["echo one"]}
        two: {stage: s, target: linux, runner_pool: b, limits: {cpus: 2}, script: ["echo two"]}
    """)
    res = remote.run(repo, "run", "--remote", cluster.address, "-j", "2", timeout=120)
    assert res.code == 0, res.stderr
    assert res.step_lines("one", 1) == ["one"] and res.step_lines("two", 1) == ["two"]
    assert not node_leftovers(res.receipt["run_id"])
