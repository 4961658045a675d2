"""Where a job may run on the cluster: its Ray label selector and resource request, and whether any
live node could ever take it. Pure; used by the gateway.

* `runner_pool: NAME` needs nodes started with the label `loom.pool=NAME`.
* `target: linux` needs `loom.target=linux` once any live node carries a `loom.target` label (a
  cluster that labels no node with a target is taken to be all Linux).
* `limits.cpus` (default 1: one job per logical CPU, as a CI runner's slots) and `limits.memory`
  become the Ray resource request; the limits themselves are enforced on the node as locally.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from loomrun.workflow.model import Job

POOL, TARGET = "loom.pool", "loom.target"


class Placement(NamedTuple):
    selector: tuple[tuple[str, str], ...]
    cpus: float
    memory: int | None


def placement(job: Job, nodes: Sequence[dict[str, Any]]) -> Placement:
    selector = []
    if job.runner_pool:
        selector.append((POOL, job.runner_pool))
    if any(TARGET in n["labels"] for n in nodes):
        selector.append((TARGET, job.target))
    return Placement(tuple(selector), float(job.limits.cpus or 1.0), job.limits.memory_bytes)


def fits(place: Placement, node: dict[str, Any]) -> bool:
    labels, res = node["labels"], node["resources"]
    if any(labels.get(k) != v for k, v in place.selector):
        return False
    if res.get("CPU", 0.0) < place.cpus:
        return False
    return place.memory is None or res.get("memory", 0.0) >= place.memory


def infeasible(job: Job, place: Placement, nodes: Sequence[dict[str, Any]]) -> str | None:
    """None when some live node could run the job; else the one-line reason, naming the pool."""
    if any(fits(place, n) for n in nodes):
        return None
    where = f'pool "{job.runner_pool}"' if job.runner_pool else "the cluster"
    labelled = [n for n in nodes if all(n["labels"].get(k) == v for k, v in place.selector)]
    if not labelled:
        wanted = ", ".join(f"{k}={v}" for k, v in place.selector)
        return f"no live node in {where} (no node carries {wanted})"
    need = f"{place.cpus:g} CPU" + (f" and {place.memory} bytes of memory" if place.memory else "")
    return f"no live node in {where} can ever provide {need}"
