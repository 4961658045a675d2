"""The resolved workflow model: NamedTuples produced by `resolve.py`, consumed by execution.

PURE. Everything here is immutable and picklable (it crosses into worker processes). NamedTuples, not
frozen dataclasses: this module is on the start-up path of `loom` and of the fork server, and
defining its classes as dataclasses took ~9 ms there (~0.2 ms each as NamedTuples); they also
pickle and unpickle faster (a `WorkerSpec` crosses to the fork server for every job).
Variables, paths, cache keys and images are kept as written; the supervisor expands them for each
job at run time (`loomrun.supervisor.env.prepare_job`) and hands workers the expanded `Job`.
"""

from __future__ import annotations

from typing import NamedTuple


class Diagnostic(NamedTuple):
    """One workflow error or warning, with its place in the file."""

    code: str  # e.g. "WF_SCHEMA_V1", "WF_YAML"
    pointer: str  # JSON pointer into the workflow, "/build/script"
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    message: str
    hint: str = ""
    file: str = "workflow.yml"  # file name as shown on the terminal (basename)

    def terminal_line(self) -> str:
        """`workflow.yml:12 missing required key "stage" in job "build"` (spec §10)."""
        return f"{self.file}:{self.line} {self.message}"

    def as_receipt_item(self) -> dict[str, object]:
        return {
            "code": self.code,
            "pointer": self.pointer,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "hint": self.hint,
        }


# ---- cache (spec §6) -------------------------------------------------------------------------


class KeyFiles(NamedTuple):
    """`key: {prefix, files}`: `<prefix>-<sha256 of the matched files>`."""

    files: tuple[str, ...]
    prefix: str = ""


class KeyPrefix(NamedTuple):
    """`key: {prefix}` alone: the prefix."""

    prefix: str


class KeyTemplate(NamedTuple):
    """`key: {template}`: $job_name, $job_id, $run_id, $pipeline_id, $head_sha and variables."""

    template: str


CacheKey = str | KeyFiles | KeyPrefix | KeyTemplate


class CacheSpec(NamedTuple):
    name: str | None  # None for the single-mapping form
    paths: tuple[str, ...]
    key: CacheKey | None = None  # None: "<job name>-<cache name or 'default'>"
    fallback_keys: tuple[str, ...] = ()
    policy: str = "pull-push"  # pull | push | pull-push
    when: str = "on_success"  # on_success | on_failure | always
    disabled: bool = False


# ---- docker (spec §4.2) ----------------------------------------------------------------------


class ImageBuild(NamedTuple):
    context: str  # workspace-relative directory
    dockerfile: str  # path relative to the context (or workspace), as written


class Image(NamedTuple):
    name: str
    build: ImageBuild | None = None


class Service(NamedTuple):
    name: str
    alias: str | None = None
    variables: tuple[tuple[str, str], ...] = ()

    @property
    def hostname(self) -> str:
        """`postgres:16` -> `postgres`; `reg.io/team/redis:7` -> `redis`; or the alias."""
        if self.alias:
            return self.alias
        last = self.name.rsplit("/", 1)[-1]
        return last.split("@", 1)[0].split(":", 1)[0]


# ---- other job keywords ----------------------------------------------------------------------


class Artifacts(NamedTuple):
    paths: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    when: str = "on_success"  # on_success | on_failure | always


class SecretSpec(NamedTuple):
    name: str  # the variable name
    ref: str  # env://NAME, keepass://..., op://...
    file: bool = True
    required: bool = True


class Limits(NamedTuple):
    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None

    @property
    def empty(self) -> bool:
        return self.memory_bytes is None and self.cpus is None and self.pids is None


class Job(NamedTuple):
    """A runnable job after include/default/extends resolution (templates never appear here)."""

    name: str
    stage: str
    script: tuple[str, ...]
    target: str = "linux"
    image: Image | None = None
    services: tuple[Service, ...] = ()
    # Ordered (name, raw value): root variables, default.variables, extends chain, job's own.
    # A later pair with the same name overrides an earlier one but keeps the earlier position.
    variables: tuple[tuple[str, str], ...] = ()
    needs: tuple[str, ...] | None = None  # None: every job of all earlier stages
    secrets: tuple[SecretSpec, ...] = ()
    caches: tuple[CacheSpec, ...] = ()  # [] when cache is null / [] / absent
    artifacts: Artifacts | None = None
    timeout_s: float | None = None
    limits: Limits = Limits()
    allow_failure: bool = False
    runner_pool: str | None = None
    invariant: str | None = None
    line: int = 0  # line of the job's key in the workflow file

    @property
    def provider(self) -> str:
        return "docker" if self.image is not None and self.image.name else "host"


class Rule(NamedTuple):
    if_expr: str | None  # None: always matches
    when: str = "always"  # always | never


class Workflow(NamedTuple):
    path: str  # absolute path of the workflow file
    stages: tuple[str, ...]
    jobs: tuple[Job, ...]  # runnable jobs in declaration order
    variables: tuple[tuple[str, str], ...] = ()  # root variables, raw
    rules: tuple[Rule, ...] = ()  # workflow.rules; empty: always run
    warnings: tuple[Diagnostic, ...] = ()

    def job(self, name: str) -> Job:
        for j in self.jobs:
            if j.name == name:
                return j
        raise KeyError(name)
