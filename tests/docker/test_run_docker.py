"""Docker jobs through the real `loom run --local` command, against a real engine (issue 4's list).

Runs in the test process; every run is a real `python -m loomrun run --local` with its supervisor,
writer and workers. After every run, nothing labelled with the run's id may remain on the engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.docker.helpers import BUSYBOX, labelled
from tests.process.runner import Background, Result, assert_logs_valid, loom_env, make_repo, run_loom, run_processes
from workers.providers.docker import reap_run

pytestmark = pytest.mark.docker

HEAD = "version: v1\nstages: [first, second, third]\n"
IMAGE_AND_SHELL = {"PATH", "HOSTNAME", "HOME", "PWD", "SHLVL"}
FETCH = "for i in $(seq 600); do wget -qO- http://{0}/ && exit 0; sleep 0.1; done; exit 1"


def job(name: str, script: list[str], stage: str = "first", image: str | None = BUSYBOX, extra: str = "") -> str:
    lines = [f"{name}:", f"  stage: {stage}", "  target: linux"]
    if image:
        lines.append(f"  image: {image}")
    lines.append("  script:")
    lines += [f"    - {json.dumps(s)}" for s in script]
    return "\n".join(lines) + "\n" + extra


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME of the test's own, so the developer's ~/.config/loom/config.yml plays no part."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    return loom_env(HOME=str(home))


@pytest.fixture
def engine_clean(engine: Any) -> Iterator[list[str]]:
    """Run ids appended here are checked (and then reaped) after the test: nothing of them may remain."""
    run_ids: list[str] = []
    yield run_ids
    left = {rid: labelled(engine, rid) for rid in run_ids}
    for rid in run_ids:
        reap_run(rid)
    assert not any(left.values()), f"left on the engine: {left}"


def checked(result: Result, run_ids: list[str], engine: Any) -> Result:
    """The run's receipt exists and parses, its logs are valid, and the engine holds nothing of it."""
    run_id = result.receipt["run_id"]
    run_ids.append(run_id)
    assert_logs_valid(result)
    assert labelled(engine, run_id) == []
    return result


def section(result: Result, job_id: str, name: str) -> dict[str, Any]:
    sections: dict[str, dict[str, Any]] = {s["name"]: s for s in result.job_manifest(job_id)["system_sections"]}
    assert name in sections, (name, list(sections))
    return sections[name]


def section_text(result: Result, job_id: str, name: str) -> str:
    events = result.logs_dir / section(result, job_id, name)["events_path"]
    texts: list[str] = []
    for raw in events.read_text().splitlines():
        ev = json.loads(raw)
        texts += ev.get("lines") or [ev.get("line") or ev.get("message") or ""]
    return "\n".join(texts)


def failure(result: Result, job_id: str) -> tuple[str, str, str | None]:
    return (result.job_summary(job_id)["status"], result.job_summary(job_id)["failure_kind"],
            result.job_manifest(job_id)["failing_section"])  # fmt: skip


# ---- workspace mount modes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "env_value", "project", "user", "expected"),
    [
        (None, None, None, None, "ephemeral_volume"),
        ("bind_mount", None, None, None, "bind_mount"),
        (None, "bind_mount", None, None, "bind_mount"),
        (None, None, "bind_mount", None, "bind_mount"),
        (None, None, None, "bind_mount", "bind_mount"),
        (None, None, "ephemeral_volume", "bind_mount", "ephemeral_volume"),
        (None, "ephemeral_volume", "bind_mount", None, "ephemeral_volume"),
        ("ephemeral_volume", "bind_mount", "bind_mount", None, "ephemeral_volume"),
        ("bind_mount", "ephemeral_volume", "ephemeral_volume", None, "bind_mount"),
    ],
)
def test_mount_mode_layers(
    tmp_path: Path, env: dict[str, str], home: Path, engine: Any, engine_clean: list[str],
    flag: str | None, env_value: str | None, project: str | None, user: str | None, expected: str,
) -> None:  # fmt: skip
    repo = make_repo(tmp_path / "repo", HEAD + job("write", ["cat seed.txt", "echo from-job > from-job.txt"]))
    (repo / "seed.txt").write_text("seeded\n")
    if project:
        (repo / ".loom" / "config.yml").write_text(f"runtime: {{docker: {{workspaceMount: {project}}}}}\n")
    if user:
        (home / ".config" / "loom").mkdir(parents=True)
        (home / ".config" / "loom" / "config.yml").write_text(f"runtime:\n  docker:\n    workspaceMount: {user}\n")
    if env_value:
        env["LOOM_DOCKER_WORKSPACE_MOUNT"] = env_value
    args = ["run", "--local", *(["--docker-workspace-mount", flag] if flag else [])]
    result = checked(run_loom(repo, *args, env=env), engine_clean, engine)
    assert result.code == 0, result.stderr
    assert result.step_lines("write", 1) == ["seeded"]
    written = Path(result.receipt["snapshot_path"]) / "from-job.txt"
    assert written.exists() is (expected == "bind_mount")
    assert not (repo / "from-job.txt").exists()  # never the user's checkout


@pytest.mark.parametrize("layer", ["env", "project", "user"])
def test_bad_mount_value_names_its_layer(
    tmp_path: Path, env: dict[str, str], home: Path, engine: Any, layer: str
) -> None:
    repo = make_repo(tmp_path / "repo", HEAD + job("write", ["true"]))
    where = {
        "env": "environment variable LOOM_DOCKER_WORKSPACE_MOUNT",
        "project": str(repo / ".loom" / "config.yml"),
        "user": str(home / ".config" / "loom" / "config.yml"),
    }[layer]
    if layer == "env":
        env["LOOM_DOCKER_WORKSPACE_MOUNT"] = "tmpfs"
    else:
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        Path(where).write_text("runtime: {docker: {workspaceMount: tmpfs}}\n")
    result = run_loom(repo, "run", "--local", env=env)
    message = f"invalid workspaceMount 'tmpfs' from {where}; expected bind_mount or ephemeral_volume"
    assert result.code == 1
    assert result.stderr.splitlines()[-1] == f"loom run: {message}"
    receipt = result.receipt
    assert (receipt["status"], receipt["exit_code"], receipt["error"]) == ("failure", 1, message)
    assert labelled(engine, receipt["run_id"]) == []


def test_bad_mount_flag_is_a_usage_error(tmp_path: Path, env: dict[str, str]) -> None:
    repo = make_repo(tmp_path / "repo", HEAD + job("write", ["true"]))
    result = run_loom(repo, "run", "--local", "--docker-workspace-mount", "tmpfs", env=env)
    assert result.code == 2
    assert "--docker-workspace-mount" in result.stderr and "tmpfs" in result.stderr
    assert not (repo / ".loom" / ".runtime" / "receipts").exists()  # no run started


# ---- artifacts both ways, the job's environment, services ----------------------------------------


def test_host_to_docker_to_host_passes_artifacts(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    workflow = HEAD + job(
        "make", ["mkdir -p in", "echo from-host > in/a.txt"], image=None,
        extra="  artifacts: {paths: [in/]}\n",
    ) + job(
        "transform", ["cat in/a.txt", "mkdir -p out", "tr a-z A-Z < in/a.txt > out/b.txt", "echo $LOOM_PROVIDER"],
        stage="second", extra="  artifacts: {paths: [out/b.txt]}\n",
    ) + job("check", ["cat out/b.txt", "echo $LOOM_PROVIDER"], stage="third", image=None)  # fmt: skip
    repo = make_repo(tmp_path / "repo", workflow)
    result = checked(run_loom(repo, "run", "--local", env=env), engine_clean, engine)
    assert result.code == 0, result.stderr
    assert result.step_lines("transform", 1) == ["from-host"]
    assert result.step_lines("transform", 4) == ["docker"]
    assert result.step_lines("check", 1) == ["FROM-HOST"]
    assert result.step_lines("check", 2) == ["host"]
    section(result, "transform", "artifact_restore")
    section(result, "check", "artifact_restore")
    extracted = result.logs_dir / "jobs" / "transform" / "artifacts" / "out" / "b.txt"
    assert extracted.read_text() == "FROM-HOST\n"
    digest = hashlib.sha256(b"FROM-HOST\n").hexdigest()
    assert result.job_manifest("transform")["artifacts"] == [{"path": "out/b.txt", "size": 10, "sha256": digest}]
    assert (result.logs_dir / "jobs" / "make" / "artifacts" / "in" / "a.txt").read_text() == "from-host\n"
    assert [j["id"] for j in result.receipt["jobs"]] == ["make", "transform", "check"]


@pytest.mark.parametrize("mode", ["ephemeral_volume", "bind_mount"])
def test_artifacts_with_links_and_empty_folders_reach_the_next_docker_job(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str], mode: str
) -> None:
    # The repo holds other things at the artifact's paths: every restore is onto existing paths (in
    # bind_mount mode the producer's own output too, links included).
    repo = tmp_path / "repo"
    (repo / "lib").mkdir(parents=True)
    (repo / "lib" / "libfoo.so").write_text("old\n")
    (repo / "empty").write_text("a file where the artifact has a folder\n")
    (repo / "node_modules" / ".bin").mkdir(parents=True)
    (repo / "node_modules" / ".bin" / "tool").write_text("old tool\n")
    make = ["rm -rf lib empty node_modules", "mkdir -p lib/empty-sub node_modules/tool node_modules/.bin empty",
            "echo so > lib/libfoo.so.1.2 && ln -s libfoo.so.1.2 lib/libfoo.so.1",
            "ln -s /workspace/lib/libfoo.so.1 lib/libfoo.so && echo js > node_modules/tool/cli.js",
            "ln -s ../tool/cli.js node_modules/.bin/tool"]
    show = ("for p in lib/libfoo.so lib/libfoo.so.1 lib/libfoo.so.1.2 lib/empty-sub node_modules/.bin/tool empty;"
            " do if [ -L $p ]; then echo \"$p -> $(readlink $p)\";"
            " elif [ -d $p ]; then echo \"$p/ $(ls -A $p | wc -l)\"; else echo \"$p: $(cat $p)\"; fi; done;"
            " cat lib/libfoo.so node_modules/.bin/tool")
    workflow = HEAD + job("make", make, extra="  artifacts: {paths: [lib, node_modules, empty]}\n") + job(
        "use", [show], stage="second")
    make_repo(repo, workflow)
    result = checked(run_loom(repo, "run", "--local", "--docker-workspace-mount", mode, env=env), engine_clean, engine)
    assert result.code == 0, result.stderr
    assert result.step_lines("use", 1) == [
        "lib/libfoo.so -> /workspace/lib/libfoo.so.1", "lib/libfoo.so.1 -> libfoo.so.1.2", "lib/libfoo.so.1.2: so",
        "lib/empty-sub/ 0", "node_modules/.bin/tool -> ../tool/cli.js", "empty/ 0", "so", "js"]
    extract = [line for line in section_text(result, "make", "artifact_extract").splitlines() if line]
    assert extract == ["empty/", "lib/empty-sub/", "lib/libfoo.so", "lib/libfoo.so.1", "lib/libfoo.so.1.2",
                       "node_modules/.bin/tool", "node_modules/tool/cli.js"]
    kept = result.logs_dir / "jobs" / "make" / "artifacts"
    assert os.readlink(kept / "lib" / "libfoo.so") == "/workspace/lib/libfoo.so.1"
    assert (kept / "empty").is_dir() and not any((kept / "empty").iterdir())


def test_a_restore_that_really_fails_is_a_provider_error_in_one_line(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    """Issue 11 item 1 through `loom run`, Docker side: the staged artifacts of `build` get a FIFO (a
    host job reaches the run's staging folder, as in tests/e2e/test_files_hardening.py), and the
    Docker job's bind-mount restore (a host-side copy, which refuses a FIFO even as root) fails.
    Only bind_mount: in ephemeral_volume mode the engine's untar makes the FIFO like any member, so
    that restore succeeds."""
    workflow = HEAD + job("build", ["mkdir -p out && echo a > out/a.txt"], image=None,
                          extra="  artifacts: {paths: [out]}\n") + job(
        "mess", ['mkfifo "../../tmp/$LOOM_RUN_ID/artifacts/build/out/pipe"'], stage="second", image=None) + job(
        "check", ["echo never"], stage="third")
    repo = make_repo(tmp_path / "repo", workflow)
    result = checked(run_loom(repo, "run", "--local", "--docker-workspace-mount", "bind_mount", env=env),
                     engine_clean, engine)
    assert result.code == 1, result.stderr
    assert failure(result, "check") == ("failed", "provider_error", "artifact_restore")
    message = result.job_summary("check")["message"]
    assert "build" in message and "cannot restore" in message and "out/pipe" in message, message
    assert "\n" not in message and len(message) < 300 and "/.loom/.runtime/" not in message, message
    assert f'job "check" failed (provider_error: {message})' in result.stderr
    assert "worker_crashed" not in result.stderr and not (result.logs_dir / "jobs" / "check" / "steps").exists()


def test_job_sees_loom_variables_and_the_image_env_only(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    repo = make_repo(tmp_path / "repo", HEAD + "variables: {GREETING: hello}\n" + job("env", ["env"]))
    env["E2E_HOST_ONLY_SECRET"] = "must-not-leak"
    result = checked(run_loom(repo, "run", "--local", env=env), engine_clean, engine)
    assert result.code == 0, result.stderr
    seen = dict(line.split("=", 1) for line in result.step_lines("env", 1))
    assert (seen["LOOM_PROVIDER"], seen["CI_PROJECT_DIR"], seen["LOOM_PROJECT_DIR"]) == ("docker",) + (
        "/workspace",
    ) * 2
    assert (seen["GREETING"], seen["PWD"], seen["PATH"]) == ("hello", "/workspace", "/bin")
    assert seen["LOOM_RUN_ID"] == result.receipt["run_id"]
    assert "E2E_HOST_ONLY_SECRET" not in seen
    others = {k for k in seen if not k.startswith(("LOOM_", "CI_")) and k not in ("CI", "GREETING")}
    assert others <= IMAGE_AND_SHELL, others


def test_services_reachable_by_name_and_alias(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    services = "  services:\n    - name: loom-test/httpd:latest\n    - {name: 'loom-test/httpd:latest', alias: web}\n"
    repo = make_repo(tmp_path / "repo", HEAD + job("web", [FETCH.format("httpd"), FETCH.format("web")], extra=services))
    result = checked(run_loom(repo, "run", "--local", env=env), engine_clean, engine)
    assert result.code == 0, result.stderr
    assert result.step_lines("web", 1) == ["loom-service-ok"]
    assert result.step_lines("web", 2) == ["loom-service-ok"]
    assert section(result, "web", "services")["status"] == "success"


# ---- limits and timeouts -------------------------------------------------------------------------


def test_memory_limit_comes_from_the_engine_not_the_exit_code(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    limits = "  limits: {memory: 64m}\n"
    workflow = HEAD + job("hog", ["echo before", "dd if=/dev/zero of=/dev/null bs=200M count=1"], extra=limits)
    # A step that dies of SIGKILL on its own also exits 137: that is a failed step, not a memory breach.
    workflow += job("self-killed", ["kill -KILL $$"], extra=limits)
    repo = make_repo(tmp_path / "repo", workflow)
    result = checked(run_loom(repo, "run", "--local", env=env), engine_clean, engine)
    assert result.code == 1
    assert failure(result, "hog") == ("failed", "memory_limit", "user")
    assert result.step_lines("hog", 1) == ["before"]
    assert failure(result, "self-killed") == ("failed", "step_failed", "user")
    assert result.job_summary("self-killed")["exit_code"] == 137


def test_a_fork_bomb_under_limits_pids_is_a_pids_limit_failure(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    limits = "  limits: {pids: 40}\n"
    workflow = HEAD + job("bomb", ["echo bombing; b() { b | b & }; b; sleep 3005"], extra=limits)
    # Refused forks that end the step at once (ash gives up with exit 2): reported the same way.
    workflow += job("forks", ["for i in $(seq 80); do sleep 300 & done; wait"], extra=limits)
    workflow += job("calm", ["for i in 1 2 3; do sleep 0.1 & done; wait"], extra=limits)
    repo = make_repo(tmp_path / "repo", workflow)
    result = checked(run_loom(repo, "run", "--local", env=env), engine_clean, engine)
    assert result.code == 1
    assert failure(result, "bomb") == ("failed", "pids_limit", "user")
    assert "bombing" in result.step_lines("bomb", 1)
    assert failure(result, "forks") == ("failed", "pids_limit", "user")
    assert result.job_summary("calm")["status"] == "success"


def test_timeout_stops_and_removes_the_container(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    repo = make_repo(tmp_path / "repo", HEAD + job("slow", ["echo started; sleep 300; echo never"],
                                                   extra="  timeout: 2s\n"))  # fmt: skip
    result = checked(run_loom(repo, "run", "--local", env=env), engine_clean, engine)
    assert result.code == 1
    assert failure(result, "slow")[:2] == ("failed", "timeout")
    lines = result.step_lines("slow", 1)  # busybox's sh may add "Terminated" for its killed `sleep`
    assert lines[0] == "started" and "never" not in lines and set(lines[1:]) <= {"Terminated"}, lines
    assert section(result, "slow", "cleanup")["status"] == "success"


# ---- a killed worker, ^C -------------------------------------------------------------------------


def _wait_for_step_output(repo: Path, bg: Background, job_id: str, needle: str) -> str:
    """Wait (bounded) until the step's events hold `needle`; return the run id."""
    logs = repo / ".loom" / ".runtime" / "logs"
    deadline = time.monotonic() + 60
    while True:
        for events in logs.glob(f"*/jobs/{job_id}/user/script/01/events.jsonl"):
            if needle in events.read_text():
                return events.parents[5].name
        assert bg.proc.poll() is None, bg.proc.communicate()
        assert time.monotonic() < deadline, f"{needle!r} never printed"
        time.sleep(0.05)


def _worker_pid(loom_pid: int) -> int:
    """The job's worker: the one live child of `loom` that leads its own session (bounded wait for a
    janitor, which is a session leader too but ends at once)."""
    deadline = time.monotonic() + 30
    while True:
        leaders = []
        for child in psutil.Process(loom_pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and os.getsid(child.pid) == child.pid:
                    leaders.append(child.pid)
            except (psutil.Error, ProcessLookupError):
                continue
        if len(leaders) == 1:
            return leaders[0]
        assert time.monotonic() < deadline, f"session leaders under loom: {leaders}"
        time.sleep(0.05)


def test_worker_sigkill_leaves_nothing_on_the_engine(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    services = "  services: [{name: 'loom-test/httpd:latest'}]\n"
    repo = make_repo(tmp_path / "repo", HEAD + job("victim", ["echo started; sleep 300"], extra=services))
    bg = Background(repo, "run", "--local", env=env)
    run_id = _wait_for_step_output(repo, bg, "victim", "started")
    assert len(labelled(engine, run_id)) == 4  # job container, service, network, volume
    os.kill(_worker_pid(bg.proc.pid), signal.SIGKILL)
    result = checked(bg.finish(), engine_clean, engine)
    assert result.code == 1
    summary = result.job_summary("victim")
    assert (summary["status"], summary["failure_kind"]) == ("failed", "worker_crashed")
    assert result.receipt["run_id"] == run_id


def test_sigint_cancels_and_leaves_nothing_on_the_engine(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    workflow = HEAD + job("busy", ["echo started; sleep 300"]) + job("later", ["true"], stage="second")
    repo = make_repo(tmp_path / "repo", workflow)
    bg = Background(repo, "run", "--local", env=env)
    run_id = _wait_for_step_output(repo, bg, "busy", "started")
    assert labelled(engine, run_id) != []
    bg.signal(signal.SIGINT)
    result = checked(bg.finish(), engine_clean, engine)
    assert result.code == 130
    assert (result.receipt["status"], result.receipt["error"]) == ("failure", "interrupted by SIGINT")
    assert failure(result, "busy")[:2] == ("canceled", "canceled")
    assert result.job_summary("later")["status"] == "canceled"
    assert section(result, "busy", "cleanup")["status"] == "success"


# ---- provider failures ---------------------------------------------------------------------------


def test_unreachable_daemon_is_a_provider_error(tmp_path: Path, env: dict[str, str]) -> None:
    repo = make_repo(tmp_path / "repo", HEAD + job("boxed", ["echo never"]))
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as sock:  # a real socket file nobody listens on
        sock.bind(str(dead))
    env["DOCKER_HOST"] = f"unix://{dead}"
    result = run_loom(repo, "run", "--local", env=env)
    assert result.code == 1
    assert failure(result, "boxed") == ("failed", "provider_error", "provider")
    said = (f"Docker daemon unreachable at unix://{dead} (DOCKER_HOST): nothing accepts connections there "
            "(connection refused); start the engine (sudo systemctl start docker, or run dockerd) or set "
            "DOCKER_HOST to one that runs")
    assert said in section_text(result, "boxed", "provider")
    assert result.stderr.splitlines()[-1] == f'loom run: job "boxed" failed (provider_error: {said})'
    assert "Error(" not in result.stderr and "('" not in result.stderr
    assert (result.receipt["status"], result.receipt["exit_code"]) == ("failure", 1)
    assert not (result.logs_dir / "jobs" / "boxed" / "user" / "script" / "01" / "summary.json").exists()


def test_missing_image_is_a_provider_error_naming_it(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    repo = make_repo(tmp_path / "repo", HEAD + job("ghost", ["echo never"], image="loom-test/does-not-exist:1"))
    result = checked(run_loom(repo, "run", "--local", env=env), engine_clean, engine)
    assert result.code == 1
    assert failure(result, "ghost") == ("failed", "provider_error", "provider")
    said = "image 'loom-test/does-not-exist:1' not found locally and pull failed: registry docker.io "
    assert said in section_text(result, "ghost", "provider")
    assert said in result.stderr.splitlines()[-1]
    assert "Error(" not in result.stderr and "('" not in result.stderr


@pytest.fixture
def built_image(engine: Any) -> Iterator[str]:
    name = f"loom-test/e2e-built-{os.getpid()}-{time.monotonic_ns()}:latest"
    yield name
    try:
        engine.remove_image(name, force=True)
    except Exception:
        pass


@pytest.mark.parametrize("outcome", ["builds", "fails"])
def test_image_build(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str], built_image: str, outcome: str
) -> None:
    run = "echo baked > /baked.txt" if outcome == "builds" else "echo about to fail && exit 3"
    image = f"\n    name: {built_image}\n    build: {{context: img, dockerfile: Dockerfile}}"
    repo = tmp_path / "repo"
    (repo / "img").mkdir(parents=True)
    (repo / "img" / "Dockerfile").write_text(f"FROM {BUSYBOX}\nRUN {run}\n")
    make_repo(repo, HEAD + job("built", ["cat /baked.txt"], image=image))
    result = checked(run_loom(repo, "run", "--local", env=env), engine_clean, engine)
    build_log = section_text(result, "built", "image_build")
    if outcome == "builds":
        assert result.code == 0, result.stderr
        assert section(result, "built", "image_build")["status"] == "success"
        assert "RUN echo baked" in build_log
        assert result.step_lines("built", 1) == ["baked"]
    else:
        assert result.code == 1
        assert failure(result, "built") == ("failed", "provider_error", "image_build")
        assert "about to fail" in build_log
        assert "image build failed: " in build_log


# ---- leftovers of dead runs ----------------------------------------------------------------------


def test_a_run_removes_leftovers_of_dead_runs(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    dead = "loom-run-local-1"
    engine_clean.append(dead)
    created = engine.create_container(BUSYBOX, command=["sleep", "300"], labels={"loom.run_id": dead,
                                                                                 "loom.job_id": "gone"})  # fmt: skip
    engine.start(created["Id"])
    assert labelled(engine, dead) != []
    repo = make_repo(tmp_path / "repo", HEAD + job("any", ["true"]))
    result = checked(run_loom(repo, "run", "--local", env=env), engine_clean, engine)
    assert result.code == 0, result.stderr
    assert labelled(engine, dead) == []


@pytest.mark.parametrize("command", [("run", "--local", "--job", "plain"), ("logs",), ("cache", "list")],
                         ids=["host-only run", "logs", "cache list"])
def test_the_next_command_removes_what_a_sigkilled_run_left_on_the_engine(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str], command: tuple[str, ...]
) -> None:
    # The step ignores TERM and the grace is long: the orphaned worker is still stopping its container
    # when the next command reaps the dead run (SIGKILL, no grace), so nothing of the job is cleaned up
    # but by that command. A host-only run, `loom logs` and `loom cache` never start a Docker job.
    workflow = HEAD + job("boxed", ["trap '' TERM; echo started; sleep 300"], extra="  services: [{name: "
                                    "'loom-test/httpd:latest'}]\n") + job("plain", ["true"], image=None)
    repo = make_repo(tmp_path / "repo", workflow)
    bg = Background(repo, "run", "--local", "--job", "boxed", env={**env, "LOOM_STOP_GRACE_S": "120"})
    dead = _wait_for_step_output(repo, bg, "boxed", "started")
    engine_clean.append(dead)
    assert len(labelled(engine, dead)) == 4  # job container, service, network, volume
    bg.signal(signal.SIGKILL)
    bg.proc.wait(timeout=30)
    if command[0] == "logs":
        command = (*command, dead)
    result = run_loom(repo, *command, env=env)
    bg.proc.communicate(timeout=60)  # EOF once the dead run's writer and worker are gone
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert labelled(engine, dead) == []
    assert run_processes(dead) == []
    receipt = json.loads((repo / ".loom" / ".runtime" / "receipts" / f"{dead}.json").read_text())
    assert (receipt["status"], receipt["error"]) == ("failure", "abandoned")


def test_a_run_leaves_a_live_run_of_another_repo_alone(
    tmp_path: Path, env: dict[str, str], engine: Any, engine_clean: list[str]
) -> None:
    waiting = job("waiting", ["echo started; while [ ! -e go ]; do sleep 0.05; done; echo released"])
    first = make_repo(tmp_path / "first", HEAD + waiting)
    bg = Background(first, "run", "--local", "--docker-workspace-mount", "bind_mount", env=env)
    first_id = _wait_for_step_output(first, bg, "waiting", "started")
    engine_clean.append(first_id)
    try:
        other = make_repo(tmp_path / "other", HEAD + job("any", ["true"]))
        assert checked(run_loom(other, "run", "--local", env=env), engine_clean, engine).code == 0
        assert labelled(engine, first_id) != []  # the other repo's run did not take it for a leftover
    finally:
        (first / ".loom" / ".runtime" / "workspaces" / first_id / "go").touch()
    result = checked(bg.finish(), engine_clean, engine)
    assert result.code == 0, result.stderr
    assert result.step_lines("waiting", 1) == ["started", "released"]
