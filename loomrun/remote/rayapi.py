"""The one module that imports `ray` (spec §12). Runs in the gateway process, and its actor class on
the cluster's nodes (inside Ray's own worker processes, where `ray` is loaded anyway).

Everything the gateway asks of Ray goes through the few functions here: connect, list the live
nodes, create a pooled node actor with a resource request and a label selector, call it, wait with
a timeout, kill it. Ray's exceptions are turned into `NodeLost` here, so no other module needs them.

Settings that must be in the environment before `import ray` (the core worker reads them once):
gRPC keepalives, so a call to a hung (SIGSTOPped) node fails instead of waiting forever (measured:
nothing for 60 s without them, an error in ~6-8 s with ~2 s each); loom's own watchdog in
`gateway.py` is the bound that counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

KEEPALIVE = {
    "RAY_grpc_client_keepalive_time_ms": "2000",
    "RAY_grpc_client_keepalive_timeout_ms": "2000",
    "RAY_USAGE_STATS_ENABLED": "0",
}
for _name, _value in KEEPALIVE.items():
    os.environ.setdefault(_name, _value)

import ray  # noqa: E402  (after the settings above)
import ray.exceptions  # noqa: E402

from workers.remote.node import NodeRunner  # noqa: E402

VERSION: str = ray.__version__
ACTOR_CONCURRENCY = 6  # a step's stream, stop, hurry, limits and pings run at once on one actor


class NodeLost(Exception):
    """The actor (so the node it was on) is gone or does not answer."""


class RemoteRunner(NodeRunner):
    """`NodeRunner` plus the one thing only Ray can tell it: which node it is on (and, to check
    they match this `loom`'s, the loomrun and Python versions there)."""

    def where(self) -> tuple[str, str]:
        return str(ray.get_runtime_context().get_node_id()), versions()


def versions() -> str:
    """What must match between the machine running `loom` and the nodes (Ray checks its own)."""
    import platform

    from loomrun import __version__

    return f"loomrun {__version__}, Python {platform.python_version()}"


_ACTOR = ray.remote(max_concurrency=ACTOR_CONCURRENCY, max_restarts=0, max_task_retries=0)(RemoteRunner)


def connect(address: str) -> None:
    """Join the cluster as its driver. The nodes run their own installed loomrun (checked against
    this one's version when an actor starts): shipping it with `runtime_env={"py_modules": ...}`
    made every run's first actor on a node ~2.5 s slower (its runtime env set up anew; measured
    3.6 s against ~1.1 s), on the path to the first step."""
    ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False,
             namespace="loom")


def shutdown() -> None:
    ray.shutdown()


def live_nodes() -> list[dict[str, Any]]:
    """Alive nodes: `id`, `address`, `labels`, `resources` (totals)."""
    out = []
    for node in ray.nodes():
        if node.get("Alive"):
            out.append({"id": node["NodeID"], "address": node.get("NodeManagerAddress", ""),
                        "labels": dict(node.get("Labels") or {}), "resources": dict(node.get("Resources") or {})})
    return out


def put(data: bytes) -> Any:
    return ray.put(data)


def create(run_id: str, selector: dict[str, str], cpus: float, memory: int | None, root: str | None) -> Any:
    opts: dict[str, Any] = {"num_cpus": cpus, "label_selector": selector}
    if memory:
        opts["memory"] = memory
    return _ACTOR.options(**opts).remote(run_id, root)


def call(actor: Any, method: str, *args: Any) -> Any:
    """Submit one method call; an ObjectRef to wait on."""
    return getattr(actor, method).remote(*args)


def stream(actor: Any, method: str, *args: Any, in_flight: int = 16) -> Any:
    """A streaming-generator call: items come back as they are yielded, at most `in_flight` ahead of
    the consumer (Ray's back-pressure), so a slow writer slows the step rather than filling memory."""
    return getattr(actor, method).options(
        num_returns="streaming", _generator_backpressure_num_objects=in_flight).remote(*args)


def ready(refs: Sequence[Any], timeout: float) -> list[Any]:
    """The refs (or generators) among `refs` whose next result is there, waiting at most `timeout`."""
    done, _ = ray.wait(list(refs), num_returns=1, timeout=timeout, fetch_local=True)
    return list(done)


def get(ref: Any) -> Any:
    """The value of a ready ref; a dead actor, node or object becomes NodeLost."""
    try:
        return ray.get(ref)
    except (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
            ray.exceptions.WorkerCrashedError) as exc:
        raise NodeLost(_first_line(exc)) from None


def next_item(gen: Any) -> Any:
    """The next ref of a streaming generator, or None at its end."""
    try:
        return next(gen)
    except StopIteration:
        return None
    except (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
            ray.exceptions.WorkerCrashedError) as exc:
        raise NodeLost(_first_line(exc)) from None


def kill(actors: Iterable[Any]) -> None:
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # an actor already gone
            continue


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
