"""Graph IR (spec §1.3) and the dependency relation (spec §3.2). PURE; runs in the `loom` process.

Graph IR never holds secret values: a secret appears only as its name and `ref`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loomrun.errors import LoomError
from loomrun.workflow.model import CacheKey, CacheSpec, Job, KeyFiles, KeyPrefix, KeyTemplate, Workflow

SCHEMA = "loom.graph-ir.v1"


def graph_ir(wf: Workflow) -> dict[str, Any]:
    """`{schema, stages, nodes, edges}`: runnable jobs in declaration order, one edge per needs entry."""
    return {
        "schema": SCHEMA,
        "stages": list(wf.stages),
        "nodes": [_node(job) for job in wf.jobs],
        "edges": [{"from": up, "to": job.name} for job in wf.jobs for up in (job.needs or ())],
    }


def _node(job: Job) -> dict[str, Any]:
    node: dict[str, Any] = {"id": job.name, "stage": job.stage, "target": job.target}
    if job.image is not None:
        img = job.image
        node["image"] = img.name if img.build is None else {
            "name": img.name, "build": {"context": img.build.context, "dockerfile": img.build.dockerfile}}
    node["script"] = list(job.script)
    if job.variables:
        node["variables"] = [{"key": k, "value": v} for k, v in job.variables]
    if job.caches:
        caches = [_cache(c) for c in job.caches]
        node["cache"] = caches[0] if len(caches) == 1 and job.caches[0].name is None else caches
    node.update(_others(job))
    return node


def _others(job: Job) -> dict[str, Any]:
    """The other set keywords, in the order of the spec's keyword table."""
    out: dict[str, Any] = {}
    if job.needs is not None:
        out["needs"] = list(job.needs)
    if job.services:
        out["services"] = [_service(s.name, s.alias, s.variables) for s in job.services]
    if job.secrets:
        out["secrets"] = {s.name: {"ref": s.ref, "file": s.file, "required": s.required} for s in job.secrets}
    if job.artifacts is not None:
        a = job.artifacts
        out["artifacts"] = {"paths": list(a.paths), **({"exclude": list(a.exclude)} if a.exclude else {}),
                            "when": a.when}
    if job.runner_pool is not None:
        out["runner_pool"] = job.runner_pool
    if job.invariant is not None:
        out["invariant"] = job.invariant
    if job.timeout_s is not None:
        out["timeout"] = _number(job.timeout_s)
    if not job.limits.empty:
        lim = job.limits
        out["limits"] = {k: v for k, v in (("memory", lim.memory_bytes), ("cpus", lim.cpus), ("pids", lim.pids))
                         if v is not None}
    if job.allow_failure:
        out["allow_failure"] = True
    return out


def _service(name: str, alias: str | None, variables: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if alias:
        out["alias"] = alias
    if variables:
        out["variables"] = [{"key": k, "value": v} for k, v in variables]
    return out


def _cache(c: CacheSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if c.name is not None:
        out["name"] = c.name
    if c.disabled:
        out["disabled"] = True
    out.update({"paths": list(c.paths), "policy": c.policy, "when": c.when})
    if c.key is not None:
        out["key"] = _key(c.key)
    if c.fallback_keys:
        out["fallback_keys"] = list(c.fallback_keys)
    return out


def _key(key: CacheKey) -> Any:
    if isinstance(key, KeyFiles):
        return {"prefix": key.prefix, "files": list(key.files)} if key.prefix else {"files": list(key.files)}
    if isinstance(key, KeyPrefix):
        return {"prefix": key.prefix}
    if isinstance(key, KeyTemplate):
        return {"template": key.template}
    return key


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value


def dependencies(wf: Workflow) -> dict[str, tuple[str, ...]]:
    """For each job the jobs it waits for: its `needs`, or else every job of all earlier stages."""
    order = {stage: i for i, stage in enumerate(wf.stages)}
    deps: dict[str, tuple[str, ...]] = {}
    for job in wf.jobs:
        if job.needs is not None:
            deps[job.name] = tuple(job.needs)
        else:
            mine = order[job.stage]
            deps[job.name] = tuple(j.name for j in wf.jobs if order[j.stage] < mine)
    return deps


def select_jobs(wf: Workflow, names: Sequence[str]) -> list[str]:
    """The named jobs plus everything they depend on, transitively, in declaration order."""
    known = {job.name for job in wf.jobs}
    for name in names:
        if name not in known:
            raise LoomError(f'unknown job "{name}" (jobs: {", ".join(j.name for j in wf.jobs)})')
    deps = dependencies(wf)
    wanted: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(deps[name])
    return [job.name for job in wf.jobs if job.name in wanted]
