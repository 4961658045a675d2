"""Whole-workflow rules (spec §2.2-§2.4): extends targets and cycles, required keys after
inheritance, declared stages, `needs` (unknown, later stage, cycle). PURE; runs in the `loom` process.
"""

from __future__ import annotations

from typing import NamedTuple

from loomrun.workflow.load import YNode
from loomrun.workflow.validate import CODE, Checker, ptr


class JobSource(NamedTuple):
    """A job or template as written: its name, mapping node and key node (for its line)."""

    name: str
    node: YNode
    key: YNode

    @property
    def runnable(self) -> bool:
        return not self.name.startswith(".")


def extends_of(node: YNode) -> list[YNode]:
    ext = node.get("extends")
    if ext is None:
        return []
    items = ext.value if ext.kind == "sequence" else [ext]
    return [item for item in items if item.kind == "string"]


def check_extends(chk: Checker, jobs: dict[str, JobSource]) -> set[str]:
    """Every extends target exists; no cycles. Returns the jobs and templates whose inheritance
    cannot be resolved (a missing target, a cycle, a part that is not a mapping, anywhere up their
    chain): the caller leaves those out of the merged checks, so one mistake is reported once."""
    broken = {name for name, src in jobs.items() if src.node.kind != "mapping"}
    for src in jobs.values():
        for i, target in enumerate(extends_of(src.node)):
            if target.value not in jobs:
                broken.add(src.name)
                ext = src.node.value["extends"]
                where = ptr(src.name, "extends") + (f"/{i}" if ext.kind == "sequence" else "")
                chk.error(target, where, f'extends target "{target.value}" of job "{src.name}" does not exist',
                          "define the template (a job whose name starts with .) or include its file")
    edges = {n: [t.value for t in extends_of(s.node) if t.value in jobs] for n, s in jobs.items()}
    for cycle in _cycles(edges):
        broken.update(cycle)
        src = jobs[cycle[0]]
        pointer = ptr(src.name, "extends")
        path = " -> ".join(cycle)
        chk.error(src.node.value["extends"], pointer,
                  f"{CODE} {pointer}: resolve extends cycle by removing one extends edge: {path}",
                  "a template chain must end in a template that extends nothing")
    return _upward(broken, edges)


def _upward(broken: set[str], edges: dict[str, list[str]]) -> set[str]:
    """`broken` plus every name whose chain reaches one of them."""
    users: dict[str, list[str]] = {}
    for name, targets in edges.items():
        for target in targets:
            users.setdefault(target, []).append(name)
    todo, out = list(broken), set(broken)
    while todo:
        for user in users.get(todo.pop(), ()):
            if user not in out:
                out.add(user)
                todo.append(user)
    return out


def _cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """Each distinct cycle once, as `a -> b -> a`, found in declaration order (iterative DFS)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for start in edges:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = [start]
        state[start] = 1
        while stack:
            node, i = stack[-1]
            targets = edges.get(node, [])
            if i >= len(targets):
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            stack[-1] = (node, i + 1)
            nxt = targets[i]
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            elif not state.get(nxt) and nxt in edges:
                state[nxt] = 1
                stack.append((nxt, 0))
                path.append(nxt)
    return found


def check_resolved(chk: Checker, stages: list[str], jobs: list[tuple[JobSource, dict[str, YNode]]],
                   runnable: set[str]) -> None:
    """Rules on the merged runnable jobs (`runnable`: every runnable name, merged or not)."""
    stage_index = {name: i for i, name in enumerate(stages)}
    job_stage: dict[str, int] = {}
    for src, merged in jobs:
        _required(chk, src, merged)
        stage = merged.get("stage")
        if stage is not None and stage.kind == "string":
            if stage.value in stage_index:
                job_stage[src.name] = stage_index[stage.value]
            elif stages:
                chk.error(stage, ptr(src.name, "stage"), f'stage "{stage.value}" of job "{src.name}" is not '
                          "declared in stages", f'declared stages: {", ".join(stages)}')
        _docker_only(chk, src, merged)
    _check_needs(chk, jobs, job_stage, runnable)


def _required(chk: Checker, src: JobSource, merged: dict[str, YNode]) -> None:
    for key in ("stage", "target", "script"):
        if key not in merged:
            chk.error(src.key, ptr(src.name), f'missing required key "{key}" in job "{src.name}"',
                      f"add `{key}:` to the job, its templates or default")
    image = merged.get("image")
    if image is not None and image.kind == "mapping":
        if image.get("name") is None:
            chk.error(image, ptr(src.name, "image"), f'missing required key "image.name" in job "{src.name}"',
                      "name the image (the tag to build or pull)")
        build = image.get("build")
        if build is not None and build.kind == "mapping" and build.get("context") is None:
            chk.error(build, ptr(src.name, "image", "build"),
                      f'missing required key "image.build.context" in job "{src.name}"',
                      "set the build context folder, e.g. `context: .`")
    cache = merged.get("cache")
    if cache is not None and cache.kind == "mapping" and cache.get("paths") is None:
        disabled = cache.get("disabled")
        if not (disabled is not None and disabled.value is True):
            chk.error(cache, ptr(src.name, "cache"), f'missing required key "cache.paths" in job "{src.name}"',
                      "list the workspace paths to cache, or set disabled: true")
    artifacts = merged.get("artifacts")
    if artifacts is not None and artifacts.kind == "mapping" and artifacts.get("paths") is None:
        chk.error(artifacts, ptr(src.name, "artifacts"),
                  f'missing required key "artifacts.paths" in job "{src.name}"', "list the paths to keep")


def _docker_only(chk: Checker, src: JobSource, merged: dict[str, YNode]) -> None:
    services = merged.get("services")
    if services is None or services.kind != "sequence" or not services.value:
        return
    image = merged.get("image")
    has_image = image is not None and (
        (image.kind == "string" and image.value) or (image.kind == "mapping" and image.get("name") is not None))
    if not has_image:
        chk.error(services, ptr(src.name, "services"), f'services need an image: job "{src.name}" runs on the host',
                  "set `image:` on the job, or remove services")


def _check_needs(chk: Checker, jobs: list[tuple[JobSource, dict[str, YNode]]], job_stage: dict[str, int],
                 runnable: set[str]) -> None:
    edges: dict[str, list[str]] = {}
    for src, merged in jobs:
        needs = merged.get("needs")
        if needs is None or needs.kind != "sequence":
            continue
        edges[src.name] = []
        for i, item in enumerate(needs.value):
            where = ptr(src.name, "needs", i)
            if item.kind != "string":
                continue  # reported with the keyword
            if item.value not in runnable:
                chk.error(item, where, f'job "{src.name}" needs unknown job "{item.value}"',
                          "name a runnable job of this workflow (templates never run)")
                continue
            mine, theirs = job_stage.get(src.name), job_stage.get(item.value)
            if mine is not None and theirs is not None and theirs > mine:
                chk.error(item, where, f'job "{src.name}" needs "{item.value}", which is in a later stage',
                          "a job may need jobs of its own or an earlier stage")
                continue
            edges[src.name].append(item.value)
    merged_by_name = {src.name: merged for src, merged in jobs}
    for cycle in _cycles(edges):
        first = cycle[0]
        needs_node = merged_by_name[first]["needs"]
        chk.error(needs_node, ptr(first, "needs"), f"needs cycle: {' -> '.join(cycle)}",
                  "remove one needs entry to break the cycle")
