"""Schema v1 shape rules (spec §2.2, §2.3, §6.1, §7) -> diagnostics. PURE; runs in the `loom` process.

This module checks each mapping as written (root keys, every job / template / `default` keyword and
its type). Rules that need the whole picture (required keys after inheritance, stages, `needs`,
`extends` targets and cycles) live in `crossref.py`, which runs on the merged jobs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath

from loomrun.workflow.durations import parse_duration, parse_memory
from loomrun.workflow.load import YNode
from loomrun.workflow.model import Diagnostic
from loomrun.workflow.rules import RuleSyntaxError, compile_expr
from loomrun.workflow.secretrefs import RefError, parse_ref
from loomrun.workflow.variables import MAX_ARG_STRLEN

CODE = "WF_SCHEMA_V1"
STAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
JOB_NAME = re.compile(r"^\.?[a-z][a-z0-9_-]{0,63}$")
VAR_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
ROOT_KEYS = ("version", "stages", "include", "workflow", "variables", "default")
JOB_KEYS = ("stage", "target", "script", "extends", "needs", "image", "services", "variables", "secrets",
            "cache", "artifacts", "runner_pool", "invariant", "timeout", "limits", "allow_failure")
CACHE_KEYS = ("name", "disabled", "paths", "key", "fallback_keys", "policy", "when")
CACHE_UNKNOWN = "remove unknown cache key; allowed keys are name, disabled, paths, key, fallback_keys, policy, when"
TARGETS = ("linux",)
# A job's timeout becomes a wait: poll() takes milliseconds as a C int, so 2^31 - 1 ms (24.8 days)
# is the most any wait can be given. A timeout is a bound, not a schedule: 24 days is plenty.
MAX_TIMEOUT_S = 24 * 86400
INT64_MAX = (1 << 63) - 1  # Docker and cgroups take memory sizes and pids counts as int64


def ptr(*parts: str | int) -> str:
    """A JSON pointer from path parts (RFC 6901 escaping)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def kind_of(node: YNode | None) -> str:
    return "nothing" if node is None else node.kind


class Checker:
    """Collects diagnostics; every check method reports and returns whether the value is usable."""

    def __init__(self) -> None:
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def error(self, node: YNode, pointer: str, message: str, hint: str = "") -> bool:
        self.errors.append(Diagnostic(CODE, pointer, node.line, node.column, message, hint, node.file))
        return False

    def warn(self, node: YNode, pointer: str, message: str, hint: str = "") -> None:
        self.warnings.append(Diagnostic(CODE, pointer, node.line, node.column, message, hint, node.file))

    def expect(self, node: YNode, pointer: str, label: str, *kinds: str) -> bool:
        if node.kind in kinds:
            return True
        want = " or ".join(kinds)
        return self.error(node, pointer, f'expected {want} for "{label}", got {node.kind}',
                          f'write "{label}" as a {want}')

    def string(self, node: YNode, pointer: str, label: str, non_empty: bool = True) -> bool:
        if not self.expect(node, pointer, label, "string"):
            return False
        if non_empty and not node.value:
            return self.error(node, pointer, f'"{label}" must not be empty', f'give "{label}" a value')
        return True

    def boolean(self, node: YNode, pointer: str, label: str) -> bool:
        return self.expect(node, pointer, label, "boolean")

    def choice(self, node: YNode, pointer: str, label: str, allowed: tuple[str, ...]) -> bool:
        if not self.string(node, pointer, label):
            return False
        if node.value in allowed:
            return True
        return self.error(node, pointer, f'invalid value "{node.value}" for "{label}"; '
                          f'expected {", ".join(allowed)}', f'use one of: {", ".join(allowed)}')

    def unknown_keys(self, node: YNode, pointer: str, allowed: tuple[str, ...], label: str) -> None:
        assert node.keys is not None
        for key, knode in node.keys.items():
            if key not in allowed:
                self.error(knode, ptr_join(pointer, key), f'unknown key "{key}" in {label}',
                           f'allowed keys: {", ".join(allowed)}')

    def string_list(self, node: YNode, pointer: str, label: str, non_empty: bool = False,
                    each: Callable[[YNode, str], bool] | None = None) -> bool:
        if not self.expect(node, pointer, label, "sequence"):
            return False
        if non_empty and not node.value:
            return self.error(node, pointer, f'"{label}" must not be empty', f'list at least one entry in "{label}"')
        ok = True
        for i, item in enumerate(node.value):
            ok = self.string(item, f"{pointer}/{i}", f"{label}[{i}]") and ok
            if ok and each is not None:
                ok = each(item, f"{pointer}/{i}") and ok
        return ok

    def mapping_of_strings(self, node: YNode, pointer: str, label: str) -> bool:
        """`variables`: NAME -> string."""
        if not self.expect(node, pointer, label, "mapping"):
            return False
        assert node.keys is not None
        ok = True
        for name, value in node.value.items():
            if not VAR_NAME.match(name):
                ok = self.error(node.keys[name], ptr_join(pointer, name),
                                f'invalid variable name "{name}"; names must match ^[A-Z_][A-Z0-9_]*$',
                                "use upper-case letters, digits and underscores")
            elif value.kind != "string":
                ok = self.error(value, ptr_join(pointer, name),
                                f'expected string for variable "{name}", got {value.kind}',
                                f'quote the value: {name}: "..."')
        return ok

    def relative_path(self, node: YNode, pointer: str) -> bool:
        path = str(node.value)
        if path.startswith("/") or ".." in PurePosixPath(path).parts:
            return self.error(node, pointer, f'path "{path}" must be relative to the workspace and hold no ".."',
                              "write a workspace-relative path such as dist/ or build/**/*.whl")
        return True


def ptr_join(pointer: str, *parts: str | int) -> str:
    return pointer + ptr(*parts)


# ---- root -----------------------------------------------------------------------------------


def check_root(chk: Checker, root: YNode) -> None:
    """Root keys of the main workflow file; jobs are checked with `check_job`."""
    assert root.keys is not None
    values = root.value
    for key in ("version", "stages"):
        if key not in values:
            chk.error(root, "", f'missing required key "{key}"', f'add `{key}:` at the top of the file')
    if "version" in values:
        node = values["version"]
        if node.kind != "string" or node.value != "v1":
            shown = f'"{node.value}"' if node.kind == "string" else node.kind
            chk.error(node, "/version", f'expected "v1" for "version", got {shown}', "write `version: v1`")
    if "stages" in values:
        _check_stages(chk, values["stages"])
    if "include" in values:
        check_include_list(chk, values["include"])
    if "workflow" in values:
        _check_workflow_key(chk, values["workflow"])
    if "variables" in values:
        chk.mapping_of_strings(values["variables"], "/variables", "variables")
    if "default" in values:
        _check_default(chk, values["default"])
    for key, knode in root.keys.items():
        if key not in ROOT_KEYS and not JOB_NAME.match(key):
            chk.error(knode, ptr(key), f'invalid job name "{key}"; job names must match '
                      r'^\.?[a-z][a-z0-9_-]{0,63}$', "use lower-case letters, digits, - and _ (a leading . "
                      "marks a template)")


def _check_stages(chk: Checker, node: YNode) -> None:
    if not chk.expect(node, "/stages", "stages", "sequence"):
        return
    if not node.value:
        chk.error(node, "/stages", '"stages" must not be empty', "list at least one stage")
        return
    seen: set[str] = set()
    for i, item in enumerate(node.value):
        if not chk.string(item, f"/stages/{i}", f"stages[{i}]"):
            continue
        if not STAGE_NAME.match(item.value):
            chk.error(item, f"/stages/{i}", f'invalid stage name "{item.value}"; stage names must match '
                      r"^[a-z][a-z0-9_-]{0,31}$", "use lower-case letters, digits, - and _")
        elif item.value in seen:
            chk.error(item, f"/stages/{i}", f'duplicate stage "{item.value}"', "list each stage once")
        seen.add(item.value)


def check_include_list(chk: Checker, node: YNode) -> None:
    if not chk.expect(node, "/include", "include", "sequence"):
        return
    for i, item in enumerate(node.value):
        pointer = f"/include/{i}"
        if not chk.expect(item, pointer, f"include[{i}]", "mapping"):
            continue
        chk.unknown_keys(item, pointer, ("local",), "include")
        local = item.get("local")
        if local is None:
            chk.error(item, pointer, f'missing required key "local" in include[{i}]',
                      "write `- local: .loom/templates/<name>.yml`")
        elif local.kind != "string" or not include_path_ok(local.value):
            chk.error(local, f"{pointer}/local",
                      f"WF_SCHEMA_V1 {pointer}/local: set include.local to .loom/templates/<name>.yml or .yaml",
                      "included files live under .loom/templates/ and end in .yml or .yaml")


def include_path_ok(path: str) -> bool:
    return (path.startswith(".loom/templates/") and path.endswith((".yml", ".yaml"))
            and ".." not in PurePosixPath(path).parts and len(path) > len(".loom/templates/.yml"))


def _check_workflow_key(chk: Checker, node: YNode) -> None:
    if not chk.expect(node, "/workflow", "workflow", "mapping"):
        return
    chk.unknown_keys(node, "/workflow", ("rules",), "workflow")
    rules = node.get("rules")
    if rules is None or not chk.expect(rules, "/workflow/rules", "workflow.rules", "sequence"):
        return
    for i, rule in enumerate(rules.value):
        pointer = f"/workflow/rules/{i}"
        if not chk.expect(rule, pointer, f"workflow.rules[{i}]", "mapping"):
            continue
        chk.unknown_keys(rule, pointer, ("if", "when"), "a workflow rule")
        if (when := rule.get("when")) is not None:
            chk.choice(when, f"{pointer}/when", "when", ("always", "never"))
        expr = rule.get("if")
        if expr is not None and chk.string(expr, f"{pointer}/if", "if"):
            try:
                compile_expr(expr.value)
            except RuleSyntaxError as exc:
                chk.error(expr, f"{pointer}/if", f"invalid if expression: {exc}",
                          'supported: $VAR, ==, !=, =~ /re/, !~ /re/, &&, ||, !, ( )')


def _check_default(chk: Checker, node: YNode) -> None:
    if not chk.expect(node, "/default", "default", "mapping"):
        return
    assert node.keys is not None
    for key, knode in node.keys.items():
        if key == "secrets":
            chk.error(knode, "/default/secrets", 'secrets are not allowed in "default"',
                      "declare secrets on the jobs that need them")
        elif key == "extends":
            chk.error(knode, "/default/extends", 'extends is not allowed in "default"',
                      "put extends on the jobs")
    check_keywords(chk, node, "/default", '"default"', JOB_KEYS, skip=("secrets", "extends"))


# ---- job keywords ---------------------------------------------------------------------------


def check_job(chk: Checker, name: str, node: YNode, pointer: str) -> bool:
    """Shape of one job or template mapping; True when it is a mapping (so it can be merged)."""
    if node.kind != "mapping":
        return chk.error(node, pointer, f'expected mapping for job "{name}", got {node.kind}',
                         "a job is a mapping of keywords (stage, script, ...)")
    check_keywords(chk, node, pointer, f'job "{name}"', JOB_KEYS)
    return True


def check_keywords(chk: Checker, node: YNode, pointer: str, label: str, allowed: tuple[str, ...],
                   skip: tuple[str, ...] = ()) -> None:
    chk.unknown_keys(node, pointer, allowed, label)
    for key, value in node.value.items():
        check = _KEYWORDS.get(key)
        if check is not None and key not in skip:
            check(chk, value, ptr_join(pointer, key))


def _stage(chk: Checker, node: YNode, pointer: str) -> None:
    chk.string(node, pointer, "stage")


def _target(chk: Checker, node: YNode, pointer: str) -> None:
    if chk.string(node, pointer, "target") and node.value not in TARGETS:
        chk.error(node, pointer, f'unknown target "{node.value}"; only "linux" exists', "write `target: linux`")


def _script(chk: Checker, node: YNode, pointer: str) -> None:
    """Entries are steps, and steps are numbered from 1 wherever a person reads them."""
    if not chk.expect(node, pointer, "script", "sequence"):
        return
    if not node.value:
        chk.error(node, pointer, '"script" must not be empty', 'list at least one entry in "script"')
    for i, item in enumerate(node.value):
        where, step = f"{pointer}/{i}", f"script entry {i + 1}"
        if item.kind != "string":
            chk.error(item, where, f"expected string for {step}, got {item.kind}", f"write {step} as a string")
        elif not item.value:
            chk.error(item, where, f"{step} must not be empty", f"give {step} a command")
        elif "\n" in item.value:
            chk.error(item, where, f"{step} contains a newline",
                      'write one step per entry (a folded ">-" scalar is fine)')
        elif (size := len(item.value.encode()) + 1) > MAX_ARG_STRLEN:
            chk.error(item, where, f"{step} is {size - 1:,} bytes; a step may be at most "
                      f"{MAX_ARG_STRLEN // 1024} KiB (the kernel's limit for one argument)",
                      "put the commands in a script file and run that")


def _extends(chk: Checker, node: YNode, pointer: str) -> None:
    if node.kind == "string":
        chk.string(node, pointer, "extends")
    elif chk.expect(node, pointer, "extends", "string", "sequence"):
        chk.string_list(node, pointer, "extends", non_empty=True)


def _needs(chk: Checker, node: YNode, pointer: str) -> None:
    if not chk.string_list(node, pointer, "needs"):
        return
    seen: set[str] = set()
    for i, item in enumerate(node.value):
        if item.value in seen:
            chk.error(item, f"{pointer}/{i}", f'duplicate "{item.value}" in needs', "list each job once")
        seen.add(item.value)


def _image(chk: Checker, node: YNode, pointer: str) -> None:
    if node.kind == "string" or not chk.expect(node, pointer, "image", "string", "mapping"):
        return
    chk.unknown_keys(node, pointer, ("name", "build"), "image")
    if (name := node.get("name")) is not None:
        chk.string(name, f"{pointer}/name", "image.name")
    build = node.get("build")
    if build is None or not chk.expect(build, f"{pointer}/build", "image.build", "mapping"):
        return
    chk.unknown_keys(build, f"{pointer}/build", ("context", "dockerfile"), "image.build")
    for key in ("context", "dockerfile"):
        if (value := build.get(key)) is not None and chk.string(value, f"{pointer}/build/{key}",
                                                                 f"image.build.{key}"):
            chk.relative_path(value, f"{pointer}/build/{key}")


def _services(chk: Checker, node: YNode, pointer: str) -> None:
    if not chk.expect(node, pointer, "services", "sequence"):
        return
    for i, item in enumerate(node.value):
        where = f"{pointer}/{i}"
        if not chk.expect(item, where, f"services[{i}]", "mapping"):
            continue
        chk.unknown_keys(item, where, ("name", "alias", "variables"), "a service")
        if (name := item.get("name")) is None:
            chk.error(item, where, f'missing required key "name" in services[{i}]', "write `- name: postgres:16`")
        else:
            chk.string(name, f"{where}/name", "services.name")
        if (alias := item.get("alias")) is not None:
            chk.string(alias, f"{where}/alias", "services.alias")
        if (variables := item.get("variables")) is not None:
            chk.mapping_of_strings(variables, f"{where}/variables", "services.variables")


def _variables(chk: Checker, node: YNode, pointer: str) -> None:
    chk.mapping_of_strings(node, pointer, "variables")


def _secrets(chk: Checker, node: YNode, pointer: str) -> None:
    if not chk.expect(node, pointer, "secrets", "mapping"):
        return
    assert node.keys is not None
    for name, spec in node.value.items():
        where = ptr_join(pointer, name)
        if not VAR_NAME.match(name):
            chk.error(node.keys[name], where, f'invalid secret name "{name}"; names must match ^[A-Z_][A-Z0-9_]*$',
                      "secret names are variable names")
            continue
        if not chk.expect(spec, where, f"secrets.{name}", "mapping"):
            continue
        chk.unknown_keys(spec, where, ("ref", "file", "required"), f'secret "{name}"')
        ref = spec.get("ref")
        if ref is None:
            chk.error(spec, where, f'missing required key "ref" in secret "{name}"',
                      "write `ref: env://NAME`, keepass://... or op://...")
        elif chk.string(ref, f"{where}/ref", f"secrets.{name}.ref"):
            try:
                parse_ref(ref.value)
            except RefError as exc:
                chk.error(ref, f"{where}/ref", f'invalid secret ref for "{name}": {exc}',
                          "env://NAME, keepass://<alias>#<entry path>:<field> or op://<vault>/<item>/<field>")
        for key in ("file", "required"):
            if (flag := spec.get(key)) is not None:
                chk.boolean(flag, f"{where}/{key}", f"secrets.{name}.{key}")


def _cache(chk: Checker, node: YNode, pointer: str) -> None:
    if node.kind == "null":
        return
    if not chk.expect(node, pointer, "cache", "mapping", "sequence", "null"):
        return
    if node.kind == "mapping":
        check_cache_entry(chk, node, pointer, in_list=False)
        return
    names: set[str] = set()
    for i, item in enumerate(node.value):
        where = f"{pointer}/{i}"
        if not chk.expect(item, where, f"cache[{i}]", "mapping"):
            continue
        check_cache_entry(chk, item, where, in_list=True)
        name = item.get("name")
        if name is None:
            chk.error(item, where, f'missing required key "name" in cache[{i}]',
                      "each cache in a list needs a unique name")
        elif name.kind == "string" and name.value in names:
            chk.error(name, f"{where}/name", f'duplicate cache name "{name.value}"', "give each cache its own name")
        elif name.kind == "string":
            names.add(name.value)
        disabled = item.get("disabled")
        if item.get("paths") is None and not (disabled is not None and disabled.value is True):
            chk.error(item, where, f'missing required key "paths" in cache[{i}]',
                      "list the workspace paths to cache, or set disabled: true")


def check_cache_entry(chk: Checker, node: YNode, pointer: str, in_list: bool) -> None:
    assert node.keys is not None
    for key, knode in node.keys.items():
        if key not in CACHE_KEYS:
            chk.error(knode, ptr_join(pointer, key), CACHE_UNKNOWN, f'"{key}" is not a cache key')
    values = node.value
    if (name := values.get("name")) is not None:
        chk.string(name, f"{pointer}/name", "cache.name")
    if (disabled := values.get("disabled")) is not None:
        chk.boolean(disabled, f"{pointer}/disabled", "cache.disabled")
    if (paths := values.get("paths")) is not None:
        chk.string_list(paths, f"{pointer}/paths", "cache.paths", non_empty=True, each=chk.relative_path)
    if (key := values.get("key")) is not None:
        _cache_key(chk, key, f"{pointer}/key")
    if (fallback := values.get("fallback_keys")) is not None:
        chk.string_list(fallback, f"{pointer}/fallback_keys", "cache.fallback_keys")
    if (policy := values.get("policy")) is not None:
        chk.choice(policy, f"{pointer}/policy", "cache.policy", ("pull", "push", "pull-push"))
    if (when := values.get("when")) is not None:
        chk.choice(when, f"{pointer}/when", "cache.when", ("on_success", "on_failure", "always"))


def _cache_key(chk: Checker, node: YNode, pointer: str) -> None:
    if node.kind == "string":
        chk.string(node, pointer, "cache.key")
        return
    if not chk.expect(node, pointer, "cache.key", "string", "mapping"):
        return
    keys = set(node.value)
    if keys not in ({"prefix", "files"}, {"prefix"}, {"files"}, {"template"}):
        chk.error(node, pointer, "cache.key must be a string, {prefix, files}, {prefix} or {template}",
                  "pick one key form")
        return
    for name in ("prefix", "template"):
        if (value := node.get(name)) is not None:
            chk.string(value, f"{pointer}/{name}", f"cache.key.{name}")
    if (files := node.get("files")) is not None:
        chk.string_list(files, f"{pointer}/files", "cache.key.files", non_empty=True, each=chk.relative_path)


def _artifacts(chk: Checker, node: YNode, pointer: str) -> None:
    if not chk.expect(node, pointer, "artifacts", "mapping"):
        return
    chk.unknown_keys(node, pointer, ("paths", "exclude", "when"), "artifacts")
    for key in ("paths", "exclude"):
        if (value := node.get(key)) is not None:
            chk.string_list(value, f"{pointer}/{key}", f"artifacts.{key}", non_empty=key == "paths",
                            each=chk.relative_path)
    if (when := node.get("when")) is not None:
        chk.choice(when, f"{pointer}/when", "artifacts.when", ("on_success", "on_failure", "always"))


def _plain_string(label: str) -> Callable[[Checker, YNode, str], None]:
    def check(chk: Checker, node: YNode, pointer: str) -> None:
        chk.string(node, pointer, label)

    return check


def _timeout(chk: Checker, node: YNode, pointer: str) -> None:
    if not chk.expect(node, pointer, "timeout", "string", "integer"):
        return
    try:
        seconds = parse_duration(node.value)
    except ValueError as exc:
        chk.error(node, pointer, f'invalid "timeout": {exc}', 'write e.g. "90s", "10m", "1h 30m" or 600')
        return
    if seconds > MAX_TIMEOUT_S:
        chk.error(node, pointer, f'invalid "timeout": {node.value} is longer than the most loom can wait '
                  f"({MAX_TIMEOUT_S // 86400}d)", 'write a timeout of at most "24d"')


def _limits(chk: Checker, node: YNode, pointer: str) -> None:
    if not chk.expect(node, pointer, "limits", "mapping"):
        return
    chk.unknown_keys(node, pointer, ("memory", "cpus", "pids"), "limits")
    if (memory := node.get("memory")) is not None and chk.expect(memory, f"{pointer}/memory", "limits.memory",
                                                                 "string", "integer"):
        try:
            size = parse_memory(memory.value)
        except ValueError as exc:
            chk.error(memory, f"{pointer}/memory", f'invalid "limits.memory": {exc}', 'write e.g. "512m" or "2g"')
        else:
            if size > INT64_MAX:
                chk.error(memory, f"{pointer}/memory", f'invalid "limits.memory": {memory.value} is more than '
                          "the largest size Docker and cgroups take (8 EiB)", 'write e.g. "512m" or "2g"')
    cpus = node.get("cpus")
    if (cpus is not None and chk.expect(cpus, f"{pointer}/cpus", "limits.cpus", "string", "integer", "float")
            and parse_cpus(cpus.value) is None):
        chk.error(cpus, f"{pointer}/cpus", f'invalid "limits.cpus": {cpus.value!r}; expected a number > 0',
                  'write e.g. "1.5"')
    pids = node.get("pids")
    if (pids is not None and chk.expect(pids, f"{pointer}/pids", "limits.pids", "integer")
            and (not isinstance(pids.value, int) or not 0 < pids.value <= INT64_MAX)):
        why = "expected an integer > 0" if not isinstance(pids.value, int) or pids.value < 1 else \
            f"more than the largest count Docker and cgroups take ({INT64_MAX})"
        chk.error(pids, f"{pointer}/pids", f'invalid "limits.pids": {pids.value}; {why}', "write e.g. 512")


def parse_cpus(value: object) -> float | None:
    try:
        cpus = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return cpus if 0 < cpus < 1e6 else None


def _allow_failure(chk: Checker, node: YNode, pointer: str) -> None:
    chk.boolean(node, pointer, "allow_failure")


_KEYWORDS: dict[str, Callable[[Checker, YNode, str], None]] = {
    "stage": _stage, "target": _target, "script": _script, "extends": _extends, "needs": _needs,
    "image": _image, "services": _services, "variables": _variables, "secrets": _secrets,
    "cache": _cache, "artifacts": _artifacts, "runner_pool": _plain_string("runner_pool"),
    "invariant": _plain_string("invariant"), "timeout": _timeout, "limits": _limits,
    "allow_failure": _allow_failure,
}
