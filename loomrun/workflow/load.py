"""YAML with line/column marks. PURE; runs in the `loom` process.

Parses into a small tree of `YNode`s that keep the file name, line and column of every value: a
plain document is composed here from libyaml's events (pyyaml's C parser, ~5x faster on a 100-job
workflow); anything else goes through pyyaml's checking composer (SafeLoader), which words the
error. Where both parsers accept a document they give the same tree, marks included (a property
test and a fuzz of odd spellings agree); libyaml also accepts a few spellings pyyaml's scanner
refuses (a tab after a value, `|1#`), and such a document loads as libyaml (the parser behind
Ruby's Psych, so GitLab's) reads it. Anchors, aliases and explicit tags are rejected
(deterministic YAML); a non-mapping root, binary bytes, an empty file, a huge file or deep nesting
all come back as diagnostics, never as exceptions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from yaml.constructor import SafeConstructor

from loomrun.userfiles import read_regular
from loomrun.workflow.model import Diagnostic

MAX_BYTES = 8 * 1024 * 1024  # a workflow is a few KB; past this it is a mistake, not a workflow
MAX_DEPTH = 48  # the deepest legal workflow is ~6 levels; keeps every walk far from the stack limit

_TAG_KINDS = {
    "tag:yaml.org,2002:str": "string",
    "tag:yaml.org,2002:int": "integer",
    "tag:yaml.org,2002:float": "float",
    "tag:yaml.org,2002:bool": "boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "timestamp",
}
_CONSTRUCT = SafeConstructor()


class YNode(NamedTuple):
    """One YAML value with its place. `value` is a dict[str, YNode], a list[YNode] or a scalar."""

    value: Any
    kind: str  # mapping | sequence | string | integer | float | boolean | null | timestamp
    line: int
    column: int
    file: str
    keys: dict[str, YNode] | None = None  # mapping only: the key nodes (for "unknown key" lines)

    def get(self, key: str) -> YNode | None:
        return self.value.get(key) if self.kind == "mapping" else None


class _Reject(Exception):
    def __init__(self, message: str, mark: Any, hint: str) -> None:
        super().__init__(message)
        self.message, self.mark, self.hint = message, mark, hint


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and explicit tags, and bounds nesting depth."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise _Reject(f"YAML alias \"*{event.anchor}\" is not allowed", event.start_mark,
                          "write the value out in full; loom workflows are deterministic YAML")
        if getattr(event, "anchor", None):
            raise _Reject(f"YAML anchor \"&{event.anchor}\" is not allowed", event.start_mark,
                          "remove the anchor; use default or extends to share job settings")
        tag = getattr(event, "tag", None)
        if tag is not None:
            shown = tag.replace("tag:yaml.org,2002:", "!!", 1)
            raise _Reject(f"explicit YAML tag \"{shown}\" is not allowed", event.start_mark,
                          "remove the tag; quote the value if it must be a string")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Reject(f"workflow is nested too deeply (more than {MAX_DEPTH} levels)",
                          event.start_mark, "flatten the structure")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_CLoader: Any = getattr(yaml, "CSafeLoader", None)


def _compose_c(text: str, file: str = "", errors: list[Diagnostic] | None = None) -> YNode | None:
    """The fast path: libyaml's parser, composed here straight into `YNode`s (the diagnostics of
    the tree go to `errors`). Returns None (take the checking composer, which also words the
    error) for anything but one plain document: an anchor, alias or explicit tag, deep nesting, an
    empty stream, a second document or a syntax error."""
    loader = _CLoader(text)
    found: list[Diagnostic] = []
    try:
        loader.get_event()  # stream start
        if not loader.check_event(yaml.DocumentStartEvent):
            return None
        loader.get_event()
        node = _compose_c_node(loader, 1, len(text), False, file, found)
        loader.get_event()  # document end
        if node is None or not loader.check_event(yaml.StreamEndEvent):
            return None
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    if errors is not None:
        errors.extend(found)
    return node


def _compose_c_node(loader: Any, depth: int, end: int, flow: bool, file: str,
                    errors: list[Diagnostic]) -> YNode | None:
    """One value from libyaml's events, as `_convert` would make it from pyyaml's node: no tree of
    pyyaml nodes in between (for 1,000 jobs that tree was ~4 MB more at the load's peak, which
    set the supervisor's peak memory for the rest of the run)."""
    event = loader.get_event()
    start: Any = event.start_mark  # libyaml's Mark: same fields as pyyaml's
    if depth > MAX_DEPTH or getattr(event, "anchor", None) or isinstance(event, yaml.AliasEvent):
        return None
    if getattr(event, "tag", None) is not None:
        return None
    line, col = start.line + 1, start.column + 1
    if isinstance(event, yaml.ScalarEvent):
        if not event.value and not event.style and (flow or start.index >= end):
            # An empty value (`{a: }`, a last `? key`): libyaml marks it where the next token
            # starts, pyyaml where the previous one ended (found by a property test).
            return None
        return _scalar(loader.resolve(yaml.ScalarNode, event.value, event.implicit), event.value, line, col, file)
    inner = bool(flow or event.flow_style) if isinstance(event, yaml.CollectionStartEvent) else flow
    if isinstance(event, yaml.SequenceStartEvent):
        items: list[YNode] = []
        while not loader.check_event(yaml.SequenceEndEvent):
            item = _compose_c_node(loader, depth + 1, end, inner, file, errors)
            if item is None:
                return None
            items.append(item)
        loader.get_event()
        return YNode(items, "sequence", line, col, file)
    if isinstance(event, yaml.MappingStartEvent):
        values: dict[str, YNode] = {}
        keys: dict[str, YNode] = {}
        while not loader.check_event(yaml.MappingEndEvent):
            kev = loader.peek_event()
            kline, kcol = kev.start_mark.line + 1, kev.start_mark.column + 1
            knode = _compose_c_node(loader, depth + 1, end, inner, file, [])
            if knode is None:
                return None
            key: str = getattr(kev, "value", "")
            problem = _key_problem(isinstance(kev, yaml.ScalarEvent), key, values, kline, kcol, file)
            # An entry in error is left out, and so are the errors of its value (as `_convert`).
            value = _compose_c_node(loader, depth + 1, end, inner, file, [] if problem else errors)
            if value is None:
                return None
            if problem is not None:
                errors.append(problem)
                continue
            keys[key] = knode if knode.kind == "string" else YNode(key, "string", kline, kcol, file)
            values[key] = value
        loader.get_event()
        return YNode(values, "mapping", line, col, file, keys)
    return None


def _diag(file: str, message: str, hint: str, line: int = 0, column: int = 0,
          code: str = "WF_YAML") -> Diagnostic:
    return Diagnostic(code=code, pointer="", line=line, column=column, message=message,
                      hint=hint, file=file)


def read_text(path: Path, label: str) -> tuple[str | None, list[Diagnostic]]:
    """The file as text, or a diagnostic saying why it cannot be read."""
    try:
        data = read_regular(path, MAX_BYTES)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return None, [_diag(label, f"cannot read {path}: {reason}", "check the path and its permissions",
                            code="WF_IO")]
    if len(data) > MAX_BYTES:
        return None, [_diag(label, f"workflow file is too large (over {MAX_BYTES // (1024 * 1024)} MiB)",
                            "a workflow is a small text file", line=1, column=1)]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, [_diag(label, f"workflow is not UTF-8 text (invalid byte at offset {exc.start})",
                            "save the file as UTF-8", line=line, column=1)]


NOT_A_WORKFLOW = 'not a loom workflow: no top-level "version" or "stages" key'
NOT_A_WORKFLOW_HINT = "point --workflow at a loom workflow (version: v1, stages, jobs)"
_WORKFLOW_LINE = re.compile(r"^(?:version|stages)[ \t]*:", re.MULTILINE)


def parse_text(text: str, label: str) -> tuple[YNode | None, list[Diagnostic]]:
    """Compose one YAML document into a `YNode` tree; the root must be a mapping."""
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        return None, [_diag(label, "workflow contains a NUL byte (binary data)", "save the file as text",
                            line=line, column=1)]
    errors: list[Diagnostic] = []
    tree = _compose_c(text, label, errors) if _CLoader is not None else None
    if tree is not None:
        return _checked_root(tree, errors, label)
    loader: _Loader | None = None
    try:  # not a plain document, or the C parser is missing: the checking composer
        loader = _Loader(text)
        node = loader.get_single_node()
    except _Reject as exc:
        return None, [_diag(label, exc.message, exc.hint, exc.mark.line + 1, exc.mark.column + 1)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        return None, [_diag(label, f"invalid YAML: {problem}", "fix the YAML syntax", line, col)]
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        return None, [_diag(label, f"invalid YAML: unacceptable character {exc.character!r}",
                            "remove control characters from the file", line, 1)]
    except yaml.YAMLError as exc:
        return None, [_diag(label, f"invalid YAML: {str(exc).splitlines()[0] if str(exc) else 'error'}",
                            "fix the YAML syntax")]
    except (RecursionError, MemoryError):
        return None, [_diag(label, "workflow is too large or nested too deeply", "simplify the file")]
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return None, [_diag(label, "workflow is empty; expected a mapping with version, stages and jobs",
                            "start with `version: v1`", line=1, column=1, code="WF_SCHEMA_V1")]
    return _checked_root(_convert(node, label, errors), errors, label)


def _checked_root(tree: YNode, errors: list[Diagnostic], label: str) -> tuple[YNode | None, list[Diagnostic]]:
    if errors:
        return None, errors
    if tree.kind != "mapping":
        return None, [Diagnostic("WF_SCHEMA_V1", "", tree.line, tree.column,
                                 f"expected mapping at the top of the file, got {tree.kind}",
                                 "a workflow is one YAML mapping", label)]
    return tree, []


def load_file(path: Path, label: str, main: bool = False) -> tuple[YNode | None, list[Diagnostic]]:
    """`main`: the workflow itself (not an include). A YAML error in a main file that does not look
    like a workflow (no top-level `version:` or `stages:` line) is reported without the parser's
    words, which may quote the file: `--workflow` pointed at some other file never echoes it."""
    text, diags = read_text(path, label)
    if text is None:
        return None, diags
    tree, errors = parse_text(text, label)
    if main and errors and errors[0].code == "WF_YAML" and not _WORKFLOW_LINE.search(text):
        return None, [errors[0]._replace(message=NOT_A_WORKFLOW, hint=NOT_A_WORKFLOW_HINT)]
    return tree, errors


def _convert(node: yaml.Node, file: str, errors: list[Diagnostic]) -> YNode:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        values: dict[str, YNode] = {}
        keys: dict[str, YNode] = {}
        for knode, vnode in node.value:
            kline, kcol = knode.start_mark.line + 1, knode.start_mark.column + 1
            scalar = isinstance(knode, yaml.ScalarNode)
            key = str(knode.value) if scalar else ""
            problem = _key_problem(scalar, key, values, kline, kcol, file)
            if problem is not None:
                errors.append(problem)
                continue
            keys[key] = YNode(key, "string", kline, kcol, file)
            values[key] = _convert(vnode, file, errors)
        return YNode(values, "mapping", line, col, file, keys)
    if isinstance(node, yaml.SequenceNode):
        return YNode([_convert(n, file, errors) for n in node.value], "sequence", line, col, file)
    return _scalar(node.tag, node.value, line, col, file)


def _key_problem(scalar: bool, key: str, seen: dict[str, YNode], line: int, col: int,
                 file: str) -> Diagnostic | None:
    """Why a mapping's entry cannot be used (both composers): a key that is not a scalar, or one
    the mapping has already; None when it can."""
    if not scalar:
        return Diagnostic("WF_YAML", "", line, col, "mapping keys must be plain strings", "use a plain name as the key",
                          file)
    if key in seen:
        return Diagnostic("WF_YAML", "", line, col, f'duplicate key "{key}"', "remove one of the two entries", file)
    return None


def _scalar(tag: str, text: str, line: int, col: int, file: str) -> YNode:
    """A scalar of resolved `tag` (both composers): strings and timestamps keep their text; the
    others are constructed as pyyaml's SafeLoader would (from a bare node: no constructor of these
    kinds reads its marks)."""
    kind = _TAG_KINDS.get(tag, "string")
    if kind in ("string", "timestamp"):
        return YNode(str(text), kind, line, col, file)
    try:
        value = _CONSTRUCT.yaml_constructors[tag](_CONSTRUCT, yaml.ScalarNode(tag, text))
    except (ValueError, OverflowError, yaml.YAMLError):
        value = str(text)  # e.g. an integer past Python's digit limit: keep its text
    return YNode(value, kind, line, col, file)
