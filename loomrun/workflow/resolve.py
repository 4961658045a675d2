"""Workflow file -> validated, resolved `Workflow` (spec §2). PURE (reads files); the `loom` process.

Steps: load the YAML with marks; check the root and every job's shape; load `include` files
(template jobs only, no nesting, no duplicate names); check `extends`; merge each runnable job
(`default` underneath, then its extends chain deepest ancestor first, a list left to right, then
its own keys); check the merged jobs; build the frozen model.

Merging (§2.4): `variables`, `image` (and `image.build`), `limits`, `artifacts`, `secrets` and a
single `cache` mapping merge key by key; everything else (lists, scalars, a cache list, `null`)
replaces, so `cache: null` / `cache: []` turns an inherited cache off.
"""

from __future__ import annotations

import os
from pathlib import Path

from loomrun.workflow.crossref import JobSource, check_extends, check_resolved, extends_of
from loomrun.workflow.durations import parse_duration, parse_memory
from loomrun.workflow.errors import WorkflowInvalid
from loomrun.workflow.load import NOT_A_WORKFLOW, NOT_A_WORKFLOW_HINT, YNode, load_file
from loomrun.workflow.model import (
    Artifacts,
    CacheKey,
    CacheSpec,
    Diagnostic,
    Image,
    ImageBuild,
    Job,
    KeyFiles,
    KeyPrefix,
    KeyTemplate,
    Limits,
    Rule,
    SecretSpec,
    Service,
    Workflow,
)
from loomrun.workflow.validate import (
    JOB_NAME,
    ROOT_KEYS,
    Checker,
    check_job,
    check_root,
    include_path_ok,
    parse_cpus,
    ptr,
)
from loomrun.workflow.varcheck import check_expansions

_MAP_MERGE = frozenset({"variables", "image", "limits", "cache", "artifacts", "secrets"})
Fields = dict[str, YNode]


def load_workflow(path: Path, repo_root: Path | None = None) -> Workflow:
    """The resolved workflow, or `WorkflowInvalid` carrying every diagnostic."""
    wf, errors = check_workflow(path, repo_root)
    if wf is None:
        raise WorkflowInvalid(errors)
    return wf


def check_workflow(path: Path, repo_root: Path | None = None) -> tuple[Workflow | None, list[Diagnostic]]:
    """(workflow, []) when valid (warnings on `Workflow.warnings`), else (None, every error found,
    sorted by file and line). One mistake never hides another: a job whose inheritance cannot be
    resolved is left out of the checks that need it, the rest are still checked."""
    path = path.absolute()
    root, errors = load_file(path, path.name, main=True)
    if root is None:
        return None, errors
    if "version" not in root.value and "stages" not in root.value:
        return None, [Diagnostic("WF_SCHEMA_V1", "", root.line, root.column, NOT_A_WORKFLOW, NOT_A_WORKFLOW_HINT,
                                 path.name)]
    if repo_root is None:
        from loomrun.repo import repo_root_for_workflow

        repo_root = repo_root_for_workflow(path) or path.parent
    chk = Checker()
    check_root(chk, root)
    jobs = _collect_jobs(chk, root, repo_root)
    runnable = {name for name, src in jobs.items() if src.runnable}
    if not runnable and not chk.errors:
        chk.error(root, "", "workflow has no runnable job", "add a job whose name does not start with .")
    broken = check_extends(chk, jobs)
    default = root.get("default")
    base: Fields = default.value if default is not None and default.kind == "mapping" else {}
    merged = _merge_all(jobs, base, broken)
    stages = _stage_names(root)
    check_resolved(chk, stages, [(jobs[name], fields) for name, fields in merged.items()], runnable)
    check_expansions(chk, root, merged)
    if chk.errors:
        return None, _in_order(chk.errors, path.name)
    _warn_empty_stages(chk, root, stages, merged)
    return _build(path, root, stages, jobs, merged, chk.warnings), []


def _stage_names(root: YNode) -> list[str]:
    stages = root.get("stages")
    if stages is None or stages.kind != "sequence":
        return []
    return [item.value for item in stages.value if item.kind == "string"]


def _in_order(errors: list[Diagnostic], main: str) -> list[Diagnostic]:
    """The workflow's own errors first, then each included file's; by line and column; each once."""
    seen: set[tuple[str, int, int, str]] = set()
    out = []
    for diag in sorted(errors, key=lambda d: (d.file != main, d.file, d.line, d.column)):
        key = (diag.file, diag.line, diag.column, diag.message)
        if key not in seen:
            seen.add(key)
            out.append(diag)
    return out


# ---- jobs and includes ----------------------------------------------------------------------


def _collect_jobs(chk: Checker, root: YNode, repo_root: Path) -> dict[str, JobSource]:
    """Jobs of the workflow file (declaration order), then templates of the included files."""
    assert root.keys is not None
    jobs: dict[str, JobSource] = {}
    for name, node in root.value.items():
        if name in ROOT_KEYS or not JOB_NAME.match(name):
            continue
        jobs[name] = JobSource(name, node, root.keys[name])
        check_job(chk, name, node, ptr(name))
    include = root.get("include")
    if include is None or include.kind != "sequence":
        return jobs
    for i, item in enumerate(include.value):
        local = item.get("local")
        if local is None or local.kind != "string" or not include_path_ok(local.value):
            continue  # already reported by check_root
        _load_include(chk, repo_root, local, f"/include/{i}/local", jobs)
    return jobs


def _load_include(chk: Checker, repo_root: Path, local: YNode, pointer: str, jobs: dict[str, JobSource]) -> None:
    path = repo_root / local.value
    if not os.path.lexists(path):
        chk.error(local, pointer, f'include file "{local.value}" not found', f"create {local.value} or fix the path")
        return
    real, top = os.path.realpath(path), os.path.realpath(repo_root)
    if not real.startswith(top.rstrip("/") + "/"):
        chk.error(local, pointer, f'include file "{local.value}" is a link to a file outside the repository',
                  "copy the template into .loom/templates/; includes never leave the repository")
        return
    tree, errors = load_file(path, path.name)
    chk.errors.extend(errors)
    if tree is None:
        return
    assert tree.keys is not None
    for name, node in tree.value.items():
        knode = tree.keys[name]
        if name == "include":
            chk.error(knode, ptr(name), f"includes do not nest: remove include from {local.value}",
                      "list every template file in the workflow's own include")
        elif not name.startswith(".") or not JOB_NAME.match(name):
            chk.error(knode, ptr(name), f'included files hold template jobs only; "{name}" is not a template',
                      'template names start with "." and match ^\\.?[a-z][a-z0-9_-]{0,63}$')
        elif name in jobs:
            chk.error(knode, ptr(name), f'duplicate job name "{name}" (also defined in {jobs[name].key.file})',
                      "rename one of the two")
        else:
            jobs[name] = JobSource(name, node, knode)
            check_job(chk, name, node, ptr(name))


# ---- merging --------------------------------------------------------------------------------


def merge_fields(base: Fields, over: Fields) -> Fields:
    """`over` on top of `base` per §2.4 (`extends` itself is never inherited)."""
    out = dict(base)
    for key, value in over.items():
        if key == "extends":
            continue
        prev = out.get(key)
        if key in _MAP_MERGE and prev is not None and prev.kind == "mapping" and value.kind == "mapping":
            out[key] = _merge_node(prev, value, deep=key == "image")
        else:
            out[key] = value
    return out


def _merge_node(base: YNode, over: YNode, deep: bool) -> YNode:
    values = dict(base.value)
    keys = dict(base.keys or {})
    for key, value in over.value.items():
        prev = values.get(key)
        if deep and prev is not None and prev.kind == "mapping" and value.kind == "mapping":
            values[key] = _merge_node(prev, value, deep=False)
        else:
            values[key] = value
        keys[key] = (over.keys or {})[key]
    return YNode(values, "mapping", over.line, over.column, over.file, keys)


def _merge_all(jobs: dict[str, JobSource], default: Fields, broken: set[str]) -> dict[str, Fields]:
    """Merged fields of every runnable job whose inheritance resolves (`broken` ones are left out)."""
    memo: dict[str, Fields] = {}
    return {name: merge_fields(default, _chain(name, jobs, memo)) for name, src in jobs.items()
            if src.runnable and name not in broken}


def _chain(name: str, jobs: dict[str, JobSource], memo: dict[str, Fields]) -> Fields:
    """A job's fields merged down its `extends` chain. A function of the module, not a closure: a
    closure that calls itself is a reference cycle, and the whole parsed tree it held (~2 MB for
    1,000 jobs) stayed until the collector ran, in the middle of the run's first jobs."""
    if name not in memo:
        node = jobs[name].node
        fields: Fields = {}
        for parent in extends_of(node):
            fields = merge_fields(fields, _chain(parent.value, jobs, memo))
        memo[name] = merge_fields(fields, node.value)
    return memo[name]


def _warn_empty_stages(chk: Checker, root: YNode, stages: list[str], merged: dict[str, Fields]) -> None:
    used = {fields["stage"].value for fields in merged.values()}
    for i, stage in enumerate(stages):
        if stage not in used:
            chk.warn(root.value["stages"].value[i], f"/stages/{i}", f'stage "{stage}" has no jobs')


# ---- the model ------------------------------------------------------------------------------


def _pairs(node: YNode | None) -> tuple[tuple[str, str], ...]:
    return tuple((k, v.value) for k, v in node.value.items()) if node is not None else ()


def _strings(node: YNode | None) -> tuple[str, ...]:
    return tuple(item.value for item in node.value) if node is not None else ()


def _opt(node: YNode | None) -> str | None:
    return str(node.value) if node is not None else None


def _build(path: Path, root: YNode, stages: list[str], jobs: dict[str, JobSource],
           merged: dict[str, Fields], warnings: list[Diagnostic]) -> Workflow:
    root_vars = _pairs(root.get("variables"))
    built = tuple(_job(name, fields, jobs[name], root_vars) for name, fields in merged.items())
    return Workflow(path=str(path), stages=tuple(stages), jobs=built, variables=root_vars,
                    rules=_rules(root), warnings=tuple(warnings))


def _rules(root: YNode) -> tuple[Rule, ...]:
    workflow = root.get("workflow")
    rules = workflow.get("rules") if workflow is not None else None
    if rules is None:
        return ()
    return tuple(Rule(if_expr=_opt(r.get("if")), when=_opt(r.get("when")) or "always") for r in rules.value)


def _job(name: str, f: Fields, src: JobSource, root_vars: tuple[tuple[str, str], ...]) -> Job:
    variables = dict(root_vars)
    variables.update(_pairs(f.get("variables")))
    timeout = f.get("timeout")
    allow = f.get("allow_failure")
    return Job(
        name=name, stage=f["stage"].value, script=_strings(f["script"]), target=f["target"].value,
        image=_image(f.get("image")), services=_services(f.get("services")),
        variables=tuple(variables.items()),
        needs=_strings(f["needs"]) if "needs" in f else None,
        secrets=_secrets(f.get("secrets")), caches=_caches(f.get("cache")),
        artifacts=_artifacts(f.get("artifacts")),
        timeout_s=parse_duration(timeout.value) if timeout is not None else None,
        limits=_limits(f.get("limits")), allow_failure=bool(allow is not None and allow.value is True),
        runner_pool=_opt(f.get("runner_pool")), invariant=_opt(f.get("invariant")), line=src.key.line,
    )


def _image(node: YNode | None) -> Image | None:
    if node is None:
        return None
    if node.kind == "string":
        return Image(node.value) if node.value else None
    build = node.get("build")
    spec = None
    if build is not None:
        dockerfile = build.get("dockerfile")
        spec = ImageBuild(context=build.value["context"].value,
                          dockerfile=dockerfile.value if dockerfile is not None else "Dockerfile")
    name = node.value["name"].value
    return Image(name, spec) if name or spec else None


def _services(node: YNode | None) -> tuple[Service, ...]:
    if node is None:
        return ()
    return tuple(Service(name=s.value["name"].value, alias=_opt(s.get("alias")),
                         variables=_pairs(s.get("variables"))) for s in node.value)


def _secrets(node: YNode | None) -> tuple[SecretSpec, ...]:
    if node is None:
        return ()
    out = []
    for name, spec in node.value.items():
        file, required = spec.get("file"), spec.get("required")
        out.append(SecretSpec(name=name, ref=spec.value["ref"].value,
                              file=file.value if file is not None else True,
                              required=required.value if required is not None else True))
    return tuple(out)


def _caches(node: YNode | None) -> tuple[CacheSpec, ...]:
    if node is None or node.kind == "null":
        return ()
    if node.kind == "mapping":
        return (_cache(node),)
    return tuple(_cache(item) for item in node.value)


def _cache(node: YNode) -> CacheSpec:
    disabled = node.get("disabled")
    return CacheSpec(
        name=_opt(node.get("name")), paths=_strings(node.get("paths")), key=_cache_key(node.get("key")),
        fallback_keys=_strings(node.get("fallback_keys")), policy=_opt(node.get("policy")) or "pull-push",
        when=_opt(node.get("when")) or "on_success", disabled=bool(disabled is not None and disabled.value is True),
    )


def _cache_key(node: YNode | None) -> CacheKey | None:
    if node is None:
        return None
    if node.kind == "string":
        return str(node.value)
    if "template" in node.value:
        return KeyTemplate(node.value["template"].value)
    if "files" in node.value:
        return KeyFiles(files=_strings(node.value["files"]), prefix=_opt(node.get("prefix")) or "")
    return KeyPrefix(node.value["prefix"].value)


def _artifacts(node: YNode | None) -> Artifacts | None:
    if node is None:
        return None
    return Artifacts(paths=_strings(node.get("paths")), exclude=_strings(node.get("exclude")),
                     when=_opt(node.get("when")) or "on_success")


def _limits(node: YNode | None) -> Limits:
    if node is None:
        return Limits()
    memory, cpus, pids = node.get("memory"), node.get("cpus"), node.get("pids")
    return Limits(memory_bytes=parse_memory(memory.value) if memory is not None else None,
                  cpus=parse_cpus(cpus.value) if cpus is not None else None,
                  pids=int(pids.value) if pids is not None else None)
