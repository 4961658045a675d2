"""`python scripts/bench.py docker [--runs N] [--seed-mb MB] [--only NAME ...]`: Docker provider costs.

Each figure is printed next to a baseline measured in the same run:
  overhead  a one-step job through DockerProvider (prepare + step + cleanup), both mount modes, next
            to create + start + wait + remove of the same container straight through the SDK (target <= 1.3x)
  loomrun   the same one-step job through the full `loom run --local` (supervisor, writer, worker, receipt),
            minus `loom run --local` of the same job without an image (loom's own start-up and bookkeeping),
            next to the same SDK baseline (target <= 1.3x)
  seed      seeding the ephemeral volume with a generated workspace, next to `tar` of the same tree (and to
            `tar | tar -x` into a host folder, which also pays for writing the bytes)
Add a measurement by writing `def bench_<name>(args) -> None` and listing it in BENCHES.
Needs the engine and the images of scripts/docker-up.sh.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomrun.workflow.model import Image, Job
from workers.providers.base import JobContext
from workers.providers.docker import DockerProvider, connect, reap_run
from workers.providers.docker.workspace import seed

IMAGE = "loom-test/busybox:latest"


class _NoSections:
    @contextmanager
    def section(self, name: str) -> Iterator[_NoSections]:
        yield self

    def line(self, text: str, stream: str = "stdout") -> None:
        pass


def _ctx(run_id: str, workspace: Path, mode: str, n: int) -> JobContext:
    job = Job(name=f"bench{n}", stage="bench", script=("true",), image=Image(IMAGE))
    env = {"LOOM_PROVIDER": "docker", "LOOM_RUN_ID": run_id, "LOOM_JOB_ID": job.name}
    return JobContext(
        run_id=run_id, pipeline_id="bench", job=job, workspace=workspace, env=env, sections=_NoSections(),
        mount_mode=mode, labels={"loom.run_id": run_id, "loom.job_id": job.name},
    )  # fmt: skip


def _one_step_job(provider: DockerProvider, ctx: JobContext) -> None:
    provider.prepare(ctx)
    try:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        handle = provider.start_step(ctx, 0, "true", out_w, err_w)
        os.read(handle.sentinel, 1)
        code = handle.poll()
        handle.close()
        os.close(out_r)
        os.close(err_r)
        if code != 0:
            raise RuntimeError(f"the bench step exited {code}")
    finally:
        provider.cleanup(ctx)


def _job_in_mode(provider: DockerProvider, run_id: str, ws: Path, mode: str, counter: Iterator[int]) -> None:
    _one_step_job(provider, _ctx(run_id, ws, mode, next(counter)))


def _sdk_container(api: object, run_id: str) -> None:
    from typing import Any

    sdk: Any = api
    cid = sdk.create_container(IMAGE, command=["true"], labels={"loom.run_id": run_id})["Id"]
    try:
        sdk.start(cid)
        status = sdk.wait(cid, timeout=60)["StatusCode"]
        if status != 0:
            raise RuntimeError(f"the baseline container exited {status}")
    finally:
        sdk.remove_container(cid, force=True)


def _timed(fn: Callable[[], None], runs: int) -> float:
    fn()  # warm-up: image metadata and the engine's caches
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench_overhead(args: argparse.Namespace) -> None:
    api = connect()
    provider = DockerProvider()
    run_id = f"loom-bench-{time.time_ns()}"
    counter = iter(range(1_000_000))
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        (ws / "README").write_text("a small workspace\n")
        try:
            base = _timed(lambda: _sdk_container(api, run_id), args.runs)
            print(f"sdk create+start+wait+remove      {base * 1000:8.1f} ms (baseline)")
            for mode in ("ephemeral_volume", "bind_mount"):
                t = _timed(functools.partial(_job_in_mode, provider, run_id, ws, mode, counter), args.runs)
                print(f"provider one-step job ({mode:16}) {t * 1000:8.1f} ms  {t / base:5.2f}x (target <= 1.30x)")
        finally:
            reap_run(run_id)


def _loom_repo(root: Path, image: str | None) -> Path:
    (root / ".loom").mkdir(parents=True)
    line = f"  image: {image}\n" if image else ""
    (root / ".loom" / "workflow.yml").write_text(
        f"version: v1\nstages: [s]\none:\n  stage: s\n  target: linux\n{line}  script: ['true']\n"
    )
    return root


def _loom_run(repo: Path, *flags: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    subprocess.run(
        [sys.executable, "-m", "loomrun", "run", "--local", "-q", *flags], cwd=repo, env=env, check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def bench_loomrun(args: argparse.Namespace) -> None:
    """Round-robin: each round times every series once, so a busy machine weighs on all of them alike."""
    api = connect()
    run_id = f"loom-bench-{time.time_ns()}"
    with tempfile.TemporaryDirectory() as tmp:
        host_repo = _loom_repo(Path(tmp) / "host", None)
        docker_repo = _loom_repo(Path(tmp) / "docker", IMAGE)
        series: dict[str, Callable[[], None]] = {
            "sdk": lambda: _sdk_container(api, run_id),
            "host": lambda: _loom_run(host_repo),
            "ephemeral_volume": functools.partial(
                _loom_run, docker_repo, "--docker-workspace-mount", "ephemeral_volume"
            ),
            "bind_mount": functools.partial(_loom_run, docker_repo, "--docker-workspace-mount", "bind_mount"),
        }
        samples: dict[str, list[float]] = {name: [] for name in series}
        try:
            for fn in series.values():
                fn()  # warm-up
            for _ in range(args.runs):
                for name, fn in series.items():
                    start = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start)
        finally:
            reap_run(run_id)
    med = {name: statistics.median(values) for name, values in samples.items()}
    base, host = med["sdk"], med["host"]
    print(f"sdk create+start+wait+remove      {base * 1000:8.1f} ms (baseline)")
    print(f"loom run, the job on the host      {host * 1000:8.1f} ms (loom's own cost, subtracted)")
    for mode in ("ephemeral_volume", "bind_mount"):
        t, extra = med[mode], med[mode] - host
        print(
            f"loom run, docker ({mode:16}) {t * 1000:8.1f} ms  minus host {extra * 1000:8.1f} ms"
            f"  {extra / base:5.2f}x (target <= 1.30x)"
        )


def _make_tree(root: Path, total_mb: int) -> None:
    """A workspace of ~total_mb MB: 64 KiB files in 100 folders, incompressible content."""
    block = os.urandom(64 << 10)
    for i in range(total_mb * 16):
        folder = root / f"d{i % 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:05d}.bin").write_bytes(block[i % 64 :] + block[: i % 64])


def _tar_only(root: Path) -> None:
    # Through a pipe: GNU tar skips reading the files when its output is /dev/null.
    tar = subprocess.Popen(["tar", "-C", str(root), "-cf", "-", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    while tar.stdout.read(1 << 20):
        pass
    tar.stdout.close()
    if tar.wait() != 0:
        raise RuntimeError("tar failed")


def _tar_copy(root: Path) -> None:
    """`tar | tar -x` into a fresh host folder: the same bytes written to the same kind of disk."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as out:
        subprocess.run(f"tar -C '{root}' -cf - . | tar -C '{out}' -xf -", shell=True, check=True)


def _seed_only(provider: DockerProvider, api: object, ctx: JobContext) -> None:
    from typing import Any

    sdk: Any = api
    vol = sdk.create_volume(f"{ctx.run_id}-seed", labels=ctx.labels)["Name"]
    host_config = sdk.create_host_config(binds={vol: {"bind": "/workspace", "mode": "rw"}})
    cid = sdk.create_container(IMAGE, command=["true"], labels=ctx.labels, host_config=host_config)["Id"]
    ctx.state.update(container=cid, volume=vol)
    try:
        seed(sdk, ctx)
    finally:
        provider.cleanup(ctx)


def _prepare_and_cleanup(provider: DockerProvider, ctx: JobContext) -> None:
    try:
        provider.prepare(ctx)
    finally:
        provider.cleanup(ctx)


def bench_seed(args: argparse.Namespace) -> None:
    api = connect()
    provider = DockerProvider()
    run_id = f"loom-bench-{time.time_ns()}"
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        _make_tree(ws, args.seed_mb)
        try:
            runs = max(1, args.runs // 3)
            base = _timed(lambda: _tar_only(ws), runs)
            print(f"tar -c of a {args.seed_mb} MB workspace        {base * 1000:8.1f} ms (baseline: read only)")
            copy = _timed(lambda: _tar_copy(ws), runs)
            print(f"tar -c | tar -x to a host folder   {copy * 1000:8.1f} ms  {copy / base:5.2f}x (read + write)")
            t = _timed(lambda: _seed_only(provider, api, _ctx(run_id, ws, "ephemeral_volume", 0)), runs)
            print(
                f"seed with put_archive (remote engine) {t * 1000:8.1f} ms  {t / base:5.2f}x  "
                f"({t / copy:4.2f}x the copy)"
            )
            with tempfile.TemporaryDirectory() as empty:
                full = _timed(lambda: _prepare_and_cleanup(provider, _ctx(run_id, ws, "ephemeral_volume", 1)), runs)
                bare = _timed(lambda: _prepare_and_cleanup(provider, _ctx(run_id, Path(empty), "ephemeral_volume", 2)),
                              runs)  # fmt: skip
            t = full - bare
            print(
                f"seed with cp -a (local engine)     {t * 1000:8.1f} ms  {t / base:5.2f}x  ({t / copy:4.2f}x the copy;"
                f" prepare+cleanup {full * 1000:.0f} ms minus {bare * 1000:.0f} ms for an empty workspace)"
            )
        finally:
            reap_run(run_id)


BENCHES: dict[str, Callable[[argparse.Namespace], None]] = {
    "overhead": bench_overhead,
    "loomrun": bench_loomrun,
    "seed": bench_seed,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py docker")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed-mb", type=int, default=200)
    parser.add_argument("--only", action="append", choices=sorted(BENCHES))
    args = parser.parse_args(argv)
    for name in args.only or list(BENCHES):
        print(f"== docker {name}")
        BENCHES[name](args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
