"""Whether a Docker job broke its limits: `limits.memory` from the engine (the container's OOMKilled
flag, or an `oom` event while it runs), `limits.pids` from the kernel (the container's pids cgroup,
whose `pids.events` counts the forks it refused: the engine keeps no record of them). Worker process.

The pids cgroup is found as the host provider's own is read: `/sys/fs/cgroup/pids/<path>` (v1) or
`/sys/fs/cgroup/<path>` (v2), the path taken from `/proc/<pid>/cgroup` of the container's first
process, else the engine's usual layouts (`docker/<id>`, `system.slice/docker-<id>.scope`). A remote
engine's cgroups are not on this machine: there, a job over `limits.pids` fails by its exit code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from docker.errors import APIError, DockerException

from workers.providers.base import JobContext

CGROUP_ROOT = Path("/sys/fs/cgroup")


def memory_exceeded(api: Any, ctx: JobContext) -> bool:
    cid = ctx.state.get("container")
    if not cid or ctx.job.limits.memory_bytes is None:
        return False
    try:
        if api.inspect_container(cid)["State"].get("OOMKilled"):
            return True
        # OOMKilled is only set once the container exits; an exec killed while it runs shows as an event.
        events = api.events(
            since=int(ctx.state.get("created_at", 0)), until=time.time(),
            filters={"container": cid, "event": "oom"}, decode=True,
        )  # fmt: skip
        return any(True for _ in events)
    except (APIError, DockerException):
        return False


def pids_exceeded(api: Any, ctx: JobContext) -> bool:
    """True once the kernel refused the job container a fork (`max` in its `pids.events`)."""
    cid = ctx.state.get("container")
    if not cid or ctx.job.limits.pids is None:
        return False
    if "pids_events" not in ctx.state:  # looked up once: a file read per tick from then on
        try:
            pid = int(api.inspect_container(cid)["State"].get("Pid") or 0)
        except (APIError, DockerException):
            pid = 0
        found = pids_events_file(cid, pid)
        ctx.state["pids_events"] = str(found) if found else ""
    return bool(ctx.state["pids_events"]) and _refused_forks(Path(ctx.state["pids_events"])) > 0


def pids_events_file(cid: str, pid: int) -> Path | None:
    """The `pids.events` of container `cid` on this machine, or None (a remote engine, no pids cgroup).

    A path read from /proc must name the container: `pid` is the engine's, and in another pid
    namespace it would be some other process."""
    paths: list[str] = []
    if pid > 0:
        try:
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                _, controllers, path = line.split(":", 2)
                if cid in path and (controllers == "" or "pids" in controllers.split(",")):
                    paths.append(path.strip("/"))
        except (OSError, ValueError):
            pass
    paths += [f"docker/{cid}", f"system.slice/docker-{cid}.scope"]
    for path in paths:
        for base in (CGROUP_ROOT / "pids", CGROUP_ROOT):
            events = base / path / "pids.events"
            if events.is_file():
                return events
    return None


def _refused_forks(events: Path) -> int:
    try:
        for line in events.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
