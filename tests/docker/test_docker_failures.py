"""DockerProvider when things go wrong: limits, stops, missing or broken images, a dead engine, leftovers."""

from __future__ import annotations

import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from loomrun.workflow.model import ImageBuild, Limits, Service
from tests.docker.helpers import BUSYBOX, MakeJob, RecordingSections, RunningStep, labelled, run_step
from workers.providers.base import ProviderError
from workers.providers.docker import DockerProvider, reap_leftovers, reap_run

pytestmark = pytest.mark.docker


def test_services_are_reachable_by_name_and_alias(provider: DockerProvider, make_job: MakeJob) -> None:
    ctx = make_job(services=(Service("loom-test/httpd:latest"), Service("loom-test/httpd:latest", alias="web")))
    provider.prepare(ctx)
    # The services start in the background: retry (a bound on tries, not a timing assertion).
    fetch = "for i in $(seq 600); do wget -q -O - http://{0}/ && exit 0; sleep 0.1; done; exit 1"
    for host in ("httpd", "web"):
        result = run_step(provider, ctx, fetch.format(host))
        assert (result.code, result.out) == (0, "loom-service-ok\n"), (host, result.out, result.err[-2000:])


def test_over_the_memory_limit_is_reported_from_the_engine(provider: DockerProvider, make_job: MakeJob) -> None:
    ctx = make_job(limits=Limits(memory_bytes=64 << 20, cpus=1.0, pids=64))
    provider.prepare(ctx)
    calm = run_step(provider, ctx, "dd if=/dev/zero of=/dev/null bs=8M count=1 2>/dev/null; echo calm")
    assert (calm.code, calm.out) == (0, "calm\n")
    assert provider.memory_exceeded(ctx) is False
    # dd's 200 MB block buffer is really touched: reading /dev/zero into it faults every page in.
    hog = run_step(provider, ctx, "dd if=/dev/zero of=/dev/null bs=200M count=1")
    assert hog.code != 0
    assert provider.memory_exceeded(ctx) is True


def test_limits_reach_the_container(provider: DockerProvider, make_job: MakeJob, engine: Any) -> None:
    ctx = make_job(limits=Limits(memory_bytes=96 << 20, cpus=0.5, pids=50))
    provider.prepare(ctx)
    host_config = engine.inspect_container(ctx.state["container"])["HostConfig"]
    assert (host_config["Memory"], host_config["NanoCpus"], host_config["PidsLimit"]) == (96 << 20, 500_000_000, 50)
    forks = run_step(provider, ctx, "for i in $(seq 80); do sleep 5 & done; wait")
    assert forks.code != 0 or "can't fork" in forks.err or "Resource temporarily unavailable" in forks.err


def test_a_fork_bomb_over_the_pids_limit_is_reported(provider: DockerProvider, make_job: MakeJob) -> None:
    ctx = make_job(limits=Limits(pids=30))
    provider.prepare(ctx)
    calm = run_step(provider, ctx, "for i in 1 2 3; do sleep 0.1 & done; wait; echo calm")
    assert (calm.code, calm.out) == (0, "calm\n")
    assert provider.pids_exceeded(ctx) is False
    bomb = RunningStep(provider, ctx, "echo bombing; b() { b | b & }; b; sleep 300")
    bomb.wait_for_output("bombing\n")
    # The kernel refuses forks from the moment the bomb reaches the limit: a bound on tries, not on time.
    for _ in range(600):
        if provider.pids_exceeded(ctx):
            break
        time.sleep(0.05)
    assert provider.pids_exceeded(ctx) is True
    provider.stop(ctx, grace_s=1)
    assert bomb.finish().code != 0


def test_stop_kills_a_step_that_ignores_sigterm(provider: DockerProvider, make_job: MakeJob, engine: Any) -> None:
    ctx = make_job()
    provider.prepare(ctx)
    step = RunningStep(provider, ctx, "trap '' TERM; echo started; sleep 300; echo never")
    step.wait_for_output("started\n")
    provider.stop(ctx, grace_s=1)
    result = step.finish()
    assert result.code == 137
    assert "never" not in result.out
    assert engine.inspect_container(ctx.state["container"])["State"]["Running"] is False
    provider.stop(ctx, grace_s=1)  # idempotent


def test_stop_lets_a_step_handle_sigterm_within_the_grace(provider: DockerProvider, make_job: MakeJob) -> None:
    ctx = make_job()
    provider.prepare(ctx)
    step = RunningStep(provider, ctx, "trap 'echo got-term; exit 7' TERM; echo started; while :; do sleep 0.1; done")
    step.wait_for_output("started\n")
    provider.stop(ctx, grace_s=30)
    result = step.finish()
    assert (result.code, result.out) == (7, "started\ngot-term\n")


def test_missing_image_names_it_and_the_cause_in_words(provider: DockerProvider, make_job: MakeJob) -> None:
    ctx = make_job(image="loom-test/does-not-exist:1.0")
    ctx.log = RecordingSections.Log([])
    with pytest.raises(ProviderError) as err:
        provider.prepare(ctx)
    assert err.value.section == "provider"
    # No registry here: the name does not resolve; with a network, Docker Hub has no such repository.
    message = err.value.message
    assert message.startswith("image 'loom-test/does-not-exist:1.0' not found locally and pull failed: registry "
                              "docker.io "), message
    assert not REPR.search(message), message
    assert [stream for _, stream in ctx.log.sink] == ["stderr"]  # the engine's own words, for the curious
    assert ctx.log.sink[0][0].startswith("pull of loom-test/does-not-exist:1.0: ")


def test_missing_service_image_fails_in_services(provider: DockerProvider, make_job: MakeJob) -> None:
    ctx = make_job(services=(Service("loom-test/no-such-service:1"),))
    with pytest.raises(ProviderError) as err:
        provider.prepare(ctx)
    assert err.value.section == "services"
    assert "loom-test/no-such-service:1" in err.value.message


# What a Python repr of a wrapped exception looks like: `('Connection aborted.', FileNotFoundError(2, ...))`.
REPR = re.compile(r"\('|[A-Za-z]+(Error|Exception)\(|HTTPConnectionPool|Max retries")
START = "start the engine (sudo systemctl start docker, or run dockerd) or set DOCKER_HOST to one that runs"


@pytest.mark.parametrize(("socket_file", "cause"), [
    (False, "no such socket"),
    (True, "nothing accepts connections there (connection refused)"),
])  # fmt: skip
def test_daemon_unreachable_says_where_why_and_how_to_start_it(
    make_job: MakeJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, socket_file: bool, cause: str
) -> None:
    dead = tmp_path / "dead.sock"
    if socket_file:  # a real socket file nobody listens on (an engine that died)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(dead))
    ctx = make_job()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dead}")
    provider = DockerProvider(timeout_s=5)
    with pytest.raises(ProviderError) as err:
        provider.prepare(ctx)
    assert err.value.section == "provider"
    assert err.value.message == f"Docker daemon unreachable at unix://{dead} (DOCKER_HOST): {cause}; {START}"
    provider.cleanup(ctx)  # never raises, even without an engine


def _build_context(workspace: Path, dockerfile: str, files: dict[str, str] | None = None) -> ImageBuild:
    ctxdir = workspace / "img"
    ctxdir.mkdir()
    (ctxdir / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (ctxdir / name).write_text(text)
        (ctxdir / name).chmod(0o755)
    return ImageBuild(context="img", dockerfile="Dockerfile")


@pytest.fixture
def built_image(engine: Any, run_id: str) -> Any:
    name = f"loom-test/built-{run_id}:latest"
    yield name
    try:
        engine.remove_image(name, force=True)
    except Exception:
        pass


def test_image_build_runs_in_its_section(
    provider: DockerProvider, make_job: MakeJob, workspace: Path, built_image: str
) -> None:
    build = _build_context(workspace, f"FROM {BUSYBOX}\nRUN echo baked > /baked.txt\n")
    ctx = make_job(image=built_image, build=build)
    provider.prepare(ctx)
    assert run_step(provider, ctx, "cat /baked.txt").out == "baked\n"
    assert isinstance(ctx.sections, RecordingSections)
    text = "\n".join(line for line, _ in ctx.sections.lines["image_build"])
    assert "RUN echo baked" in text
    assert ctx.sections.failed == []


def test_image_build_failure(provider: DockerProvider, make_job: MakeJob, workspace: Path, built_image: str) -> None:
    build = _build_context(workspace, f"FROM {BUSYBOX}\nRUN echo about to fail && exit 3\n")
    ctx = make_job(image=built_image, build=build)
    with pytest.raises(ProviderError) as err:
        provider.prepare(ctx)
    assert err.value.section == "image_build"
    assert err.value.message.startswith("image build failed: ")
    assert "returned a non-zero code: 3" in err.value.message
    assert isinstance(ctx.sections, RecordingSections)
    assert ctx.sections.failed == ["image_build"]
    assert any("about to fail" in line for line, _ in ctx.sections.lines["image_build"])


def test_exec_format_error(provider: DockerProvider, make_job: MakeJob, workspace: Path, built_image: str) -> None:
    # /bin/sh is an executable file the kernel cannot run (no ELF header, no #!): ENOEXEC.
    build = _build_context(workspace, "FROM scratch\nCOPY sh /bin/sh\n", {"sh": "not a program\n"})
    assert stat.S_IMODE(os.stat(workspace / "img" / "sh").st_mode) == 0o755
    ctx = make_job(image=built_image, build=build)
    with pytest.raises(ProviderError) as err:
        provider.prepare(ctx)
    assert err.value.message.startswith("exec format error: ")


def test_reap_run_and_leftovers(provider: DockerProvider, make_job: MakeJob, engine: Any, run_id: str) -> None:
    dead = make_job(name="dead", services=(Service("loom-test/httpd:latest"),))
    provider.prepare(dead)
    assert len(labelled(engine, run_id)) == 4  # job, service, network, volume
    # The test's own run is "alive": nothing of it goes.
    assert reap_leftovers([run_id], prefix=run_id) == []
    removed = reap_leftovers(["some-other-run"], prefix=run_id)
    assert sorted(r.split()[0] for r in removed) == ["container", "container", "network", "volume"]
    assert labelled(engine, run_id) == []

    kept, gone = make_job(name="kept"), make_job(name="gone")
    provider.prepare(kept)
    provider.prepare(gone)
    gone_volume = next(m["Name"] for m in engine.inspect_container(gone.state["container"])["Mounts"]
                       if m["Destination"] == "/workspace")  # anonymous: named by the engine
    assert sorted(reap_run(run_id, "gone")) == [f"container {run_id}-gone", f"volume {gone_volume}"]
    assert run_step(provider, kept, "echo still-here").out == "still-here\n"
    assert len(reap_run(run_id)) == 2
    assert labelled(engine, run_id) == []
