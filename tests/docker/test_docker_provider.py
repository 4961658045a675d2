"""DockerProvider against a real engine: steps, environment, mount modes, copies in and out."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.docker.helpers import BUSYBOX, MakeJob, RecordingSections, RunningStep, listing, run_step
from workers.providers.base import ProviderError
from workers.providers.docker import DockerProvider

pytestmark = pytest.mark.docker


def test_steps_report_exit_code_and_output(provider: DockerProvider, make_job: MakeJob) -> None:
    ctx = make_job()
    provider.prepare(ctx)
    first = run_step(provider, ctx, "echo one; echo two; echo oops >&2; pwd; exit 3")
    assert first.code == 3
    assert first.out == "one\ntwo\n/workspace\n"
    assert first.err == "oops\n"
    # Steps share the container: a later step sees what an earlier one left.
    assert run_step(provider, ctx, "echo kept > state.txt").code == 0
    assert run_step(provider, ctx, "cat state.txt; cat seed.txt").out == "kept\nseeded\n"


def test_output_arrives_while_the_step_runs(provider: DockerProvider, make_job: MakeJob, workspace: Path) -> None:
    ctx = make_job(mount_mode="bind_mount")
    provider.prepare(ctx)
    step = RunningStep(provider, ctx, "echo ready; while [ ! -e go ]; do sleep 0.05; done; echo done")
    step.wait_for_output("ready\n")
    assert step.handle.poll() is None  # it is blocked until `go` exists
    (workspace / "go").touch()
    result = step.finish()
    assert (result.code, result.out) == (0, "ready\ndone\n")


def test_a_step_silent_longer_than_the_client_timeout(make_job: MakeJob) -> None:
    provider = DockerProvider(timeout_s=2)
    ctx = make_job()
    try:
        provider.prepare(ctx)
        result = run_step(provider, ctx, "sleep 4; echo late")
        assert (result.code, result.out) == (0, "late\n")
    finally:
        provider.cleanup(ctx)


def test_env_is_loom_variables_plus_image_env(
    provider: DockerProvider, make_job: MakeJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOM_TEST_HOST_ONLY", "must-not-leak")
    ctx = make_job()
    provider.prepare(ctx)
    result = run_step(provider, ctx, "env")
    seen = dict(line.split("=", 1) for line in result.out.splitlines())
    for name, value in ctx.env.items():
        assert seen[name] == value
    assert seen["PATH"] == "/bin"  # from the image
    assert "LOOM_TEST_HOST_ONLY" not in seen
    engine_and_shell = {"PATH", "HOSTNAME", "HOME", "PWD", "SHLVL"}
    assert set(seen) - set(ctx.env) <= engine_and_shell


def test_trace_runs_steps_with_sh_x(provider: DockerProvider, make_job: MakeJob) -> None:
    ctx = make_job()
    ctx.trace = True
    provider.prepare(ctx)
    result = run_step(provider, ctx, "echo traced")
    assert "+ echo traced" in result.err


@pytest.mark.parametrize("mode", ["ephemeral_volume", "bind_mount"])
def test_mount_modes(provider: DockerProvider, make_job: MakeJob, workspace: Path, mode: str) -> None:
    ctx = make_job(mount_mode=mode)
    provider.prepare(ctx)
    result = run_step(provider, ctx, "cat seed.txt && echo from-job > made-in-job.txt")
    assert (result.code, result.out) == (0, "seeded\n")
    assert (workspace / "made-in-job.txt").exists() == (mode == "bind_mount")
    if mode == "bind_mount":
        assert (workspace / "made-in-job.txt").read_text() == "from-job\n"


def _tree(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_text()
    return out


@pytest.mark.parametrize("mode", ["ephemeral_volume", "bind_mount"])
def test_import_and_export_round_trip(provider: DockerProvider, make_job: MakeJob, tmp_path: Path, mode: str) -> None:
    ctx = make_job(mount_mode=mode)
    provider.prepare(ctx)
    src = tmp_path / "restored"
    (src / "deps" / "a").mkdir(parents=True)
    (src / "deps" / "a" / "b.txt").write_text("restored b\n")
    os.symlink("a/b.txt", src / "deps" / "link")
    provider.import_tree(ctx, src)
    check = run_step(provider, ctx, "cat deps/a/b.txt deps/link && readlink deps/link")
    assert (check.code, check.out) == (0, "restored b\nrestored b\na/b.txt\n")

    made = "mkdir -p dist/sub && echo x > dist/x.txt && echo y > dist/sub/y.txt && echo no > dist/skip.log"
    assert run_step(provider, ctx, f"{made} && ln -s x.txt dist/alias && echo top > top.txt").code == 0

    dest = tmp_path / "exported"
    copied = provider.export_paths(ctx, ["dist"], ["dist/*.log"], dest)
    assert copied == ["dist/alias", "dist/sub/y.txt", "dist/x.txt"]
    assert _tree(dest) == {"dist/alias": "-> x.txt", "dist/sub/y.txt": "y\n", "dist/x.txt": "x\n"}

    # A pattern that starts with a wildcard reaches the whole workspace.
    dest2 = tmp_path / "exported2"
    assert provider.export_paths(ctx, ["*.txt", "**/y.txt"], [], dest2) == ["dist/sub/y.txt", "seed.txt", "top.txt"]
    assert (dest2 / "top.txt").read_text() == "top\n"
    assert provider.export_paths(ctx, ["nothing-here/**"], [], tmp_path / "empty") == []


# A shared library's version links (relative and absolute), a node_modules/.bin link, a link to
# nowhere, an empty folder named by the artifact and one inside a named folder.
ARTIFACT = ("mkdir -p lib/empty-sub node_modules/tool node_modules/.bin empty && echo so > lib/libfoo.so.1.2"
            " && ln -s libfoo.so.1.2 lib/libfoo.so.1 && ln -s /workspace/lib/libfoo.so.1 lib/libfoo.so"
            " && echo js > node_modules/tool/cli.js && ln -s ../tool/cli.js node_modules/.bin/tool"
            " && ln -s /nonexistent dangling")
ARTIFACT_PATHS = ["lib", "node_modules", "empty", "dangling"]


@pytest.mark.parametrize("mode", ["ephemeral_volume", "bind_mount"])
def test_export_keeps_links_as_links_and_empty_folders(
    provider: DockerProvider, make_job: MakeJob, tmp_path: Path, mode: str
) -> None:
    ctx = make_job(mount_mode=mode)
    provider.prepare(ctx)
    assert run_step(provider, ctx, ARTIFACT).code == 0
    dest = tmp_path / "out"
    copied = provider.export_paths(ctx, ARTIFACT_PATHS, [], dest)
    assert copied == ["dangling", "empty", "lib/empty-sub", "lib/libfoo.so", "lib/libfoo.so.1", "lib/libfoo.so.1.2",
                      "node_modules/.bin/tool", "node_modules/tool/cli.js"]
    assert listing(dest) == {
        "dangling": "-> /nonexistent", "empty": "/", "lib": "/", "lib/empty-sub": "/",
        "lib/libfoo.so": "-> /workspace/lib/libfoo.so.1", "lib/libfoo.so.1": "-> libfoo.so.1.2",
        "lib/libfoo.so.1.2": "so\n", "node_modules": "/", "node_modules/.bin": "/",
        "node_modules/.bin/tool": "-> ../tool/cli.js", "node_modules/tool": "/", "node_modules/tool/cli.js": "js\n",
    }  # fmt: skip
    # An excluded empty folder stays behind; a pattern for files brings no folder along.
    assert provider.export_paths(ctx, ["lib"], ["lib/empty-sub"], tmp_path / "out2") == [
        "lib/libfoo.so", "lib/libfoo.so.1", "lib/libfoo.so.1.2"]
    assert provider.export_paths(ctx, ["**/*.so*"], [], tmp_path / "out3") == [
        "lib/libfoo.so", "lib/libfoo.so.1", "lib/libfoo.so.1.2"]


@pytest.mark.parametrize("mode", ["ephemeral_volume", "bind_mount"])
def test_export_leaves_named_pipes_out(provider: DockerProvider, make_job: MakeJob, tmp_path: Path, mode: str) -> None:
    ctx = make_job(mount_mode=mode)
    provider.prepare(ctx)
    assert run_step(provider, ctx, "mkdir -p dist && mkfifo dist/pipe && echo x > dist/x.txt").code == 0
    assert provider.export_paths(ctx, ["dist"], [], tmp_path / "out") == ["dist/x.txt"]
    assert listing(tmp_path / "out") == {"dist": "/", "dist/x.txt": "x\n"}


def _artifact_tree(src: Path) -> Path:
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "libfoo.so.1.2").write_text("so\n")
    os.symlink("libfoo.so.1.2", src / "lib" / "libfoo.so.1")
    os.symlink("/workspace/lib/libfoo.so.1", src / "lib" / "libfoo.so")
    (src / "node_modules" / ".bin").mkdir(parents=True)
    os.symlink("../tool/cli.js", src / "node_modules" / ".bin" / "tool")
    (src / "conf").write_text("new conf\n")
    (src / "data").mkdir()
    (src / "data" / "d.txt").write_text("d\n")
    (src / "plain.txt").write_text("plain\n")
    (src / "empty").mkdir()
    return src


# What the workspace holds at the artifact's paths before the restore, each of another kind or content.
BEFORE_RESTORE = ("mkdir -p lib conf elsewhere-dir && echo old > lib/libfoo.so && ln -s /elsewhere lib/libfoo.so.1"
                  " && ln -s elsewhere-dir node_modules && echo inner > conf/inner && echo old > data"
                  " && ln -s /etc/hostname plain.txt && echo kept > keep.txt")
SHOW = ("for p in lib/libfoo.so lib/libfoo.so.1 lib/libfoo.so.1.2 node_modules node_modules/.bin/tool conf data"
        " data/d.txt plain.txt empty keep.txt elsewhere-dir; do if [ -L $p ]; then echo \"$p -> $(readlink $p)\";"
        " elif [ -d $p ]; then echo \"$p/ $(ls -A $p | wc -l)\"; else echo \"$p: $(cat $p)\"; fi; done")


@pytest.mark.parametrize("mode", ["ephemeral_volume", "bind_mount"])
def test_a_restore_onto_existing_paths_the_artifact_wins(
    provider: DockerProvider, make_job: MakeJob, tmp_path: Path, mode: str
) -> None:
    ctx = make_job(mount_mode=mode)
    provider.prepare(ctx)
    assert run_step(provider, ctx, BEFORE_RESTORE).code == 0
    hostname = run_step(provider, ctx, "cat /etc/hostname").out
    src = _artifact_tree(tmp_path / "artifact")
    provider.import_tree(ctx, src)
    provider.import_tree(ctx, src)  # again, onto itself: every path exists, links included
    shown = run_step(provider, ctx, SHOW)
    assert shown.out.splitlines() == [
        "lib/libfoo.so -> /workspace/lib/libfoo.so.1", "lib/libfoo.so.1 -> libfoo.so.1.2", "lib/libfoo.so.1.2: so",
        "node_modules/ 1", "node_modules/.bin/tool -> ../tool/cli.js", "conf: new conf", "data/ 1", "data/d.txt: d",
        "plain.txt: plain", "empty/ 0", "keep.txt: kept", "elsewhere-dir/ 0",
    ], shown.err  # fmt: skip
    assert run_step(provider, ctx, "cat /etc/hostname").out == hostname  # never written through a link


@pytest.mark.parametrize("mode", ["ephemeral_volume", "bind_mount"])
def test_a_restore_that_fails_is_one_short_line(
    provider: DockerProvider, make_job: MakeJob, engine: Any, workspace: Path, tmp_path: Path, mode: str
) -> None:
    ctx = make_job(mount_mode=mode)
    provider.prepare(ctx)
    src = _artifact_tree(tmp_path / "artifact")
    locked = workspace / "lib"
    if mode == "bind_mount":  # a folder the restore may not write: read-only, and immutable for root
        locked.mkdir()
        locked.chmod(0o555)
        subprocess.run(["chattr", "+i", str(locked)], check=os.geteuid() == 0, capture_output=True)
    else:  # the engine has lost the container
        engine.remove_container(ctx.state["container"], force=True, v=True)
    try:
        with pytest.raises(ProviderError) as err:
            provider.import_tree(ctx, src)
    finally:
        if mode == "bind_mount":
            subprocess.run(["chattr", "-i", str(locked)], check=False, capture_output=True)
            locked.chmod(0o755)
    message = err.value.message
    assert "\n" not in message and len(message) < 300, message
    assert message.startswith("cannot restore "), message
    assert "lib" in message if mode == "bind_mount" else "No such container" in message, message


def test_export_refuses_paths_outside_the_workspace(
    provider: DockerProvider, make_job: MakeJob, tmp_path: Path
) -> None:
    ctx = make_job()
    provider.prepare(ctx)
    for bad in ("../etc", "/etc/passwd"):
        with pytest.raises(ValueError):
            provider.export_paths(ctx, [bad], [], tmp_path / "out")


def test_labels_on_everything_and_no_privileges(
    provider: DockerProvider, make_job: MakeJob, engine: Any, run_id: str
) -> None:
    from loomrun.workflow.model import Service

    ctx = make_job(services=(Service("loom-test/httpd:latest"),))
    provider.prepare(ctx)
    info = engine.inspect_container(ctx.state["container"])
    assert info["Config"]["Labels"]["loom.run_id"] == run_id
    assert info["Config"]["Labels"]["loom.job_id"] == "job"
    assert info["HostConfig"]["Privileged"] is False
    assert not any("docker.sock" in m.get("Source", "") for m in info["Mounts"])
    workspace = next(m for m in info["Mounts"] if m["Destination"] == "/workspace")
    assert workspace["Type"] == "volume"  # ephemeral_volume, the default
    volume = workspace["Name"]
    assert engine.inspect_volume(volume)["Labels"]["loom.run_id"] == run_id
    assert engine.inspect_network(ctx.state["network"])["Labels"]["loom.run_id"] == run_id
    for sid in ctx.state["services"]:
        assert engine.inspect_container(sid)["Config"]["Labels"]["loom.job_id"] == "job"
    provider.cleanup(ctx)
    provider.cleanup(ctx)  # idempotent, never raises
    from tests.docker.helpers import labelled

    assert labelled(engine, run_id) == []


# ---- the container's shell session ---------------------------------------------------------------


def test_quotes_newlines_and_a_last_line_without_newline(provider: DockerProvider, make_job: MakeJob) -> None:
    ctx = make_job()
    provider.prepare(ctx)
    result = run_step(provider, ctx, "echo \"it's\" 'quoted'\nprintf 'two\\nlines'; printf 'err' >&2; exit 7")
    assert (result.code, result.out, result.err) == (7, "it's quoted\ntwo\nlines", "err")
    assert run_step(provider, ctx, "echo next").out == "next\n"  # the session carries on


def test_a_command_with_control_characters_runs_as_an_exec(provider: DockerProvider, make_job: MakeJob) -> None:
    ctx = make_job()
    provider.prepare(ctx)
    result = run_step(provider, ctx, "echo 'a\x10\x11b' | wc -c; exit 4")  # \x10\x11: ctrl-p ctrl-q
    assert (result.code, result.out.strip()) == (4, "5")
    assert run_step(provider, ctx, "echo after").out == "after\n"


def test_output_of_a_background_process_never_hangs_a_step(provider: DockerProvider, make_job: MakeJob) -> None:
    ctx = make_job()
    provider.prepare(ctx)
    first = run_step(provider, ctx, "(sleep 0.3; echo late) & echo first")
    assert (first.code, first.out) == (0, "first\n")  # the step ends when its shell does
    time.sleep(0.6)
    second = run_step(provider, ctx, "echo second")
    assert second.code == 0 and second.out.endswith("second\n")  # "late" arrived in between: it shows here
    assert second.out in ("second\n", "late\nsecond\n")


def test_stop_between_steps_ends_the_container(provider: DockerProvider, make_job: MakeJob, engine: Any) -> None:
    ctx = make_job()
    provider.prepare(ctx)
    assert run_step(provider, ctx, "true").code == 0
    provider.stop(ctx, 30.0)  # the shell waits for input: the stop must wake it, not sit out the grace
    state = engine.inspect_container(ctx.state["container"])["State"]
    assert not state["Running"] and state["ExitCode"] == 0  # its TERM trap ended it, no SIGKILL
    provider.cleanup(ctx)


# ---- seeding the ephemeral volume ----------------------------------------------------------------


def test_the_volume_is_seeded_by_a_copy_from_a_read_only_mount(
    provider: DockerProvider, make_job: MakeJob, workspace: Path
) -> None:

    ctx = make_job()
    ctx.log = RecordingSections.Log([])
    provider.prepare(ctx)
    assert ctx.log.sink == []  # `cp -a` worked: no fallback said
    result = run_step(provider, ctx, "cat seed.txt; echo new > made.txt; touch /.loom-seed/x || echo read-only")
    assert result.out == "seeded\nread-only\n"
    assert not (workspace / "made.txt").exists()  # the snapshot on the host is never written


def test_an_image_whose_user_cannot_copy_is_seeded_through_the_engine(
    provider: DockerProvider, make_job: MakeJob, engine: Any, run_id: str
) -> None:
    import io


    name = f"loom-test/nobody-{run_id}:latest"
    dockerfile = f"FROM {BUSYBOX}\nUSER 65534\n".encode()  # may not write the fresh volume's root
    try:
        for _ in engine.build(fileobj=io.BytesIO(dockerfile), tag=name, rm=True, forcerm=True, decode=True):
            pass
        ctx = make_job(image=name)
        ctx.log = RecordingSections.Log([])
        provider.prepare(ctx)
        assert any("using put_archive" in text for text, _ in ctx.log.sink), ctx.log.sink
        assert run_step(provider, ctx, "cat seed.txt").out == "seeded\n"
        provider.cleanup(ctx)
    finally:
        with contextlib.suppress(Exception):
            engine.remove_image(name, force=True)
