"""The predefined variables (spec §2.5) and each job's expanded variables, paths, cache keys and
image. Runs in the supervisor; reads only `os.environ`.

Expansion happens here, once, where a job's variables are known: a worker receives its job with
`artifacts`, `cache` (paths, every key form, fallback keys) and `image` already expanded, and never
expands them again. A host job starts from the `loom` process environment (§4.1), so `$NAME` expands
from it too (`PATH: "$PATH:/opt/bin"` must extend the caller's PATH, not hide it); a Docker job gets
only the predefined and workflow variables, so its values expand from those alone. Everything is
bounded as in `loom check`, and a job whose variables would not fit in a process's environment (the
caller's environment adds to a host job's) is a `LoomError` naming the job and the cause, before
the run starts anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache

from loomrun.errors import LoomError
from loomrun.workflow.model import CacheKey, CacheSpec, Image, ImageBuild, Job, KeyFiles, KeyTemplate
from loomrun.workflow.variables import (
    MAX_ARG_STRLEN,
    ExpansionError,
    env_string_size,
    expand_value,
    resolve,
    secret_placeholder,
)
from loomrun.workspace import GitFacts


def pipeline_variables(*, run_id: str, pipeline_id: str, project_dir: str, project_name: str,
                       git: GitFacts | None) -> dict[str, str]:
    """The predefined variables every job shares, and `workflow.rules` sees."""
    env = {
        "LOOM_CI": "true", "CI": "true", "LOOM_RUN_ID": run_id, "LOOM_PIPELINE_ID": pipeline_id,
        "LOOM_PROJECT_DIR": project_dir, "CI_PROJECT_DIR": project_dir, "CI_PIPELINE_ID": pipeline_id,
        "CI_PROJECT_NAME": project_name, "CI_PIPELINE_SOURCE": "local",
        "CI_DEFAULT_BRANCH": (git.default_branch if git else None) or "main",
    }
    if git is None:
        return env
    if git.head_sha:
        env["CI_COMMIT_SHA"] = git.head_sha
        env["CI_COMMIT_SHORT_SHA"] = git.head_sha[:8]
    if git.branch:
        env["CI_COMMIT_BRANCH"] = git.branch
    if git.tag:
        env["CI_COMMIT_TAG"] = git.tag
    if git.branch or git.tag:
        env["CI_COMMIT_REF_NAME"] = git.branch or git.tag or ""
    return env


def predefined(job: Job, pipeline: Mapping[str, str], project_dir: str) -> dict[str, str]:
    env = dict(pipeline)
    env.update({
        "LOOM_JOB_ID": job.name, "LOOM_JOB_NAME": job.name, "LOOM_JOB_STAGE": job.stage,
        "LOOM_PROJECT_DIR": project_dir, "LOOM_PROVIDER": job.provider,
        "CI_JOB_NAME": job.name, "CI_JOB_STAGE": job.stage, "CI_PROJECT_DIR": project_dir,
    })
    return env


def prepare_job(job: Job, pipeline: Mapping[str, str], project_dir: str,
                caller: Mapping[str, str] | None = None) -> tuple[dict[str, str], Job]:
    """(the job's variables: predefined, then the workflow's, expanded; the job with its paths, cache
    keys and image expanded). `caller`: the environment a host job starts from (os.environ)."""
    base = predefined(job, pipeline, project_dir)
    host = job.provider == "host"
    if caller is None:
        caller = os.environ
    env = base
    if job.variables:
        values, errors = resolve(job.variables, {**caller, **base} if host else base)
        if errors:
            raise LoomError(f'job "{job.name}": {next(iter(errors.values()))}')
        env = {**base, **values}
    _check_fits(job, env, caller if host else {})
    if not (job.artifacts or job.caches or job.image):
        return env, job
    known = {**caller, **env} if host else env
    return env, _Expander(job, known, pipeline).job()


def _check_fits(job: Job, env: Mapping[str, str], caller: Mapping[str, str]) -> None:
    """The kernel takes at most ARG_MAX bytes of arguments and environment together (and a step's
    `sh -c` argument may be up to MAX_ARG_STRLEN). Each string counts with its pointer. A bound
    from the strings' lengths alone (a character is at most 4 bytes, and a replaced caller value is
    counted twice) settles every ordinary job without encoding a string or asking os.environ
    (which encodes each name): the exact count is for the jobs near the limit."""
    room = _arg_max() - MAX_ARG_STRLEN
    caller_size = _size_of(caller) if caller else 0
    if caller_size + 4 * (sum(map(len, env)) + sum(map(len, env.values()))) + 10 * len(env) <= room:
        return
    total = caller_size
    for name, value in env.items():
        total += env_string_size(name, value) + 8
        if name in caller:  # the job's value replaces the caller's
            total -= env_string_size(name, caller[name]) + 8
    if total > room:
        whose = "its variables and the caller's environment" if caller else "its variables"
        raise LoomError(f'job "{job.name}": {whose} come to {total:,} bytes; a process may be given at most '
                        f"{room:,} (ARG_MAX less room for a step)")


@cache
def _arg_max() -> int:
    return os.sysconf("SC_ARG_MAX")


_sizes: dict[int, tuple[Mapping[str, str], int]] = {}


def _size_of(caller: Mapping[str, str]) -> int:
    """The caller's environment is the same for every job of a run: sized once."""
    known = _sizes.get(id(caller))
    if known is None or known[0] is not caller or len(caller) != len(known[0]):
        known = _sizes[id(caller)] = (caller, sum(env_string_size(k, v) + 8 for k, v in caller.items()))
    return known[1]


class _Expander:
    """Spec §2.5's list: artifacts.paths and exclude, cache.paths, cache.key (all forms, files
    included), fallback_keys, image. `{template}` keys and fallback keys also see the five names of
    §6.2 (`$job_name`, `$job_id`, `$run_id`, `$pipeline_id`, `$head_sha`)."""

    def __init__(self, job: Job, known: Mapping[str, str], pipeline: Mapping[str, str]) -> None:
        # A job secret's name is none of the caller's or the workflow's: in a path it stays as
        # written; in a cache key it becomes a placeholder the worker fills (spec §7.3).
        secrets = {s.name for s in job.secrets}
        self.name, self.src = job.name, job
        self.known = {k: v for k, v in known.items() if k not in secrets} if secrets else known
        self.keys = {**self.known, **{n: secret_placeholder(n) for n in secrets}}
        self.with_ids = {**self.keys, "job_name": job.name, "job_id": job.name,
                         "run_id": pipeline["LOOM_RUN_ID"], "pipeline_id": pipeline["LOOM_PIPELINE_ID"],
                         "head_sha": pipeline.get("CI_COMMIT_SHA", "")}

    def job(self) -> Job:
        job = self.src
        art = job.artifacts
        if art is not None:
            art = art._replace(paths=self.paths(art.paths, "artifacts path"),
                               exclude=self.paths(art.exclude, "artifacts exclude"))
        return job._replace(artifacts=art, caches=tuple(self.cache(c) for c in job.caches),
                            image=self.image(job.image))

    def text(self, value: str, what: str, known: Mapping[str, str] | None = None) -> str:
        try:
            return expand_value(value, self.known if known is None else known)
        except ExpansionError as exc:
            raise LoomError(f'job "{self.name}": {what} "{value[:60]}" {exc}') from None

    def paths(self, values: tuple[str, ...], what: str) -> tuple[str, ...]:
        out = []
        for value in values:
            path = self.text(value, what)
            if path != value and (not path or path.startswith("/") or ".." in path.split("/")):
                raise LoomError(f'job "{self.name}": {what} "{value}" expands to "{path}", which must be relative '
                                'to the workspace and hold no ".."')
            out.append(path)
        return tuple(out)

    def cache(self, spec: CacheSpec) -> CacheSpec:
        fallbacks = tuple(self.text(k, "fallback key", self.with_ids) for k in spec.fallback_keys)
        return spec._replace(paths=self.paths(spec.paths, "cache path"), key=self.key(spec.key),
                             fallback_keys=fallbacks)

    def key(self, key: CacheKey | None) -> CacheKey | None:
        if key is None:
            return None
        if isinstance(key, str):
            return self.text(key, "cache key", self.keys)
        if isinstance(key, KeyFiles):
            return KeyFiles(self.paths(key.files, "cache key file"), self.text(key.prefix, "cache key prefix",
                                                                               self.keys))
        if isinstance(key, KeyTemplate):
            return KeyTemplate(self.text(key.template, "cache key template", self.with_ids))
        return key._replace(prefix=self.text(key.prefix, "cache key prefix", self.keys))

    def image(self, image: Image | None) -> Image | None:
        if image is None:
            return None
        name = self.text(image.name, "image")
        if image.name and not name.strip():
            raise LoomError(f'job "{self.name}": image "{image.name}" expands to an empty name')
        build = image.build
        if build is not None:
            context, dockerfile = self.paths((build.context, build.dockerfile), "image build path")
            build = ImageBuild(context, dockerfile)
        return Image(name, build)

