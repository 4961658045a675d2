"""Check-time rules for what expands (spec §2.5): variable cycles, expanded sizes, and the paths,
cache keys and images that variables expand into. PURE; runs in the `loom` process.

Expansion here has no base: predefined values and the caller's environment are known only when a
run starts, so their names stay as written. The supervisor expands again then, with them, under the
same bounds (`loomrun.supervisor.env`).
"""

from __future__ import annotations

from collections.abc import Callable

from loomrun.workflow.load import YNode
from loomrun.workflow.validate import Checker, ptr
from loomrun.workflow.variables import ExpansionError, expand_value, resolve

Fields = dict[str, YNode]
Resolved = tuple[dict[str, str], dict[str, str]]
HINT_CYCLE = "break the cycle: one of these variables must stop referring to the next"
HINT_SIZE = "a variable that uses another twice doubles it; keep big data in a file and pass its path"


def check_expansions(chk: Checker, root: YNode, merged: dict[str, Fields]) -> None:
    """Every runnable job's variables, then what they expand into."""
    root_nodes = _string_vars(root.get("variables"))
    memo: dict[tuple[tuple[str, str], ...], Resolved] = {}  # jobs that share their variables share the work
    for job, fields in merged.items():
        nodes = {**root_nodes, **_string_vars(fields.get("variables"))}
        pairs = tuple((name, node.value) for name, node in nodes.items())
        if pairs not in memo:
            memo[pairs] = resolve(pairs, {})
        values, errors = memo[pairs]
        for name, message in errors.items():
            where = ptr("variables", name) if root_nodes.get(name) is nodes[name] else ptr(job, "variables", name)
            chk.error(nodes[name], where, message, HINT_CYCLE if "cycle" in message else HINT_SIZE)
        _Fields(chk, job, values).check(fields)


def _string_vars(node: YNode | None) -> dict[str, YNode]:
    if node is None or node.kind != "mapping":
        return {}
    return {name: value for name, value in node.value.items() if value.kind == "string"}


class _Fields:
    """The keywords spec §2.5 expands: artifacts paths and exclude, cache paths and keys, image."""

    def __init__(self, chk: Checker, job: str, values: dict[str, str]) -> None:
        self.chk, self.job, self.values = chk, job, values

    def check(self, fields: Fields) -> None:
        artifacts = fields.get("artifacts")
        if artifacts is not None and artifacts.kind == "mapping":
            for key in ("paths", "exclude"):
                self.strings(artifacts.get(key), ("artifacts", key), self.path)
        cache = fields.get("cache")
        if cache is not None and cache.kind in ("mapping", "sequence"):
            entries = [cache] if cache.kind == "mapping" else list(cache.value)
            for i, entry in enumerate(entries):
                if entry.kind == "mapping":
                    self.cache(entry, ("cache",) if cache.kind == "mapping" else ("cache", i))
        image = fields.get("image")
        if image is not None:
            self.image(image)

    def cache(self, entry: YNode, at: tuple[str | int, ...]) -> None:
        self.strings(entry.get("paths"), (*at, "paths"), self.path)
        self.strings(entry.get("fallback_keys"), (*at, "fallback_keys"), self.text)
        key = entry.get("key")
        if key is None:
            return
        if key.kind == "string":
            self.text(key, ptr(self.job, *at, "key"))
        elif key.kind == "mapping":
            for name in ("prefix", "template"):
                if (part := key.get(name)) is not None and part.kind == "string":
                    self.text(part, ptr(self.job, *at, "key", name))
            self.strings(key.get("files"), (*at, "key", "files"), self.path)

    def image(self, image: YNode) -> None:
        at = ptr(self.job, "image")
        if image.kind == "string":
            self.image_name(image, at)
            return
        if image.kind != "mapping":
            return
        if (name := image.get("name")) is not None and name.kind == "string":
            self.image_name(name, at + "/name")
        build = image.get("build")
        if build is not None and build.kind == "mapping":
            for key in ("context", "dockerfile"):
                if (part := build.get(key)) is not None and part.kind == "string":
                    self.path(part, f"{at}/build/{key}")

    def strings(self, node: YNode | None, at: tuple[str | int, ...], each: Callable[[YNode, str], object]) -> None:
        if node is None or node.kind != "sequence":
            return
        for i, item in enumerate(node.value):
            if item.kind == "string":
                each(item, ptr(self.job, *at, i))

    def text(self, node: YNode, pointer: str) -> str | None:
        try:
            return expand_value(node.value, self.values)
        except ExpansionError as exc:
            self.chk.error(node, pointer, f'"{node.value[:60]}" {exc}', HINT_SIZE)
            return None

    def path(self, node: YNode, pointer: str) -> None:
        value = self.text(node, pointer)
        if value is None or value == node.value:
            return  # as written, it was checked with the keyword
        if not value or value.startswith("/") or ".." in value.split("/"):
            self.chk.error(node, pointer, f'path "{node.value}" expands to "{value}", which must be relative to '
                           'the workspace and hold no ".."', "change the variable, or write the path out")

    def image_name(self, node: YNode, pointer: str) -> None:
        value = self.text(node, pointer)
        if value is not None and node.value and not value.strip():
            self.chk.error(node, pointer, f'image "{node.value}" expands to an empty name',
                           "give the variable a value, or remove image to run on the host")
