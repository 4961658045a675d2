"""Adding a KeePass alias to `.loom/config.yml` for `loom secrets keepass vault create` (spec §7.4).
Runs in the `loom` process.

The file is the user's: its comments, order and layout stay. The alias is inserted as one line
(`"team/app": {path: ..., passwordEnv: ...}`) at the end of `providers.keepass.aliases`, creating
the missing levels as block mappings at the indentation the file already uses. Only a layout this
cannot follow (a flow mapping `providers: {...}`, a non-mapping) makes it rewrite the whole file
from its data, which loses the comments: rare, and said on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

LEVELS = ("providers", "keepass", "aliases")


def entry_line(alias: str, fields: dict[str, str]) -> str:
    body = ", ".join(f"{key}: {json.dumps(value)}" for key, value in fields.items())
    return f"{json.dumps(alias)}: {{{body}}}"


def declared(config: Path, alias: str) -> bool:
    data = _load(config.read_text(encoding="utf-8")) if config.exists() else None
    for level in LEVELS:
        if not isinstance(data, dict):
            return False
        data = data.get(level)
    return isinstance(data, dict) and alias in data


def add_alias(config: Path, alias: str, fields: dict[str, str]) -> None:
    """Insert the alias (the caller checked that the file has no entry for it)."""
    text = config.read_text(encoding="utf-8") if config.exists() else ""
    new = _insert(text, alias, fields)
    if new is None or not _has(new, alias, fields):
        data = _load(text) or {}
        node = data
        for level in LEVELS:
            child = node.get(level)
            if not isinstance(child, dict):
                child = node[level] = {}
            node = child
        node[alias] = fields
        new = yaml.safe_dump(data, sort_keys=False)
        print(f"note: {config} was rewritten from its data (its layout could not be kept)", file=sys.stderr)
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(new, encoding="utf-8")


def _load(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else None


def _has(text: str, alias: str, fields: dict[str, str]) -> bool:
    try:
        data = _load(text)
        for level in (*LEVELS, alias):
            data = data[level]
    except (yaml.YAMLError, KeyError, TypeError):
        return False
    return bool(data == fields)


def _insert(text: str, alias: str, fields: dict[str, str]) -> str | None:
    """`text` with the alias inserted as block YAML, or None when its layout is not block mappings."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    try:
        root = yaml.compose(text) if text.strip() else None
    except yaml.YAMLError:
        return None
    if root is None:
        root = yaml.MappingNode("tag:yaml.org,2002:map", [])
    node, indent, missing = root, 0, list(LEVELS)
    while missing:
        if not isinstance(node, yaml.MappingNode) or node.flow_style:
            return None
        child = next((v for k, v in node.value if k.value == missing[0]), None)
        if child is None:
            break
        if isinstance(child, yaml.ScalarNode) and child.value == "":  # `aliases:` with nothing under it
            return None
        node, missing = child, missing[1:]
        if isinstance(node, yaml.MappingNode) and node.value:
            indent = node.value[0][0].start_mark.column
    if not isinstance(node, yaml.MappingNode) or node.flow_style:
        return None
    if node.value:
        indent = node.value[0][0].start_mark.column
        at = _line_after(node)
    else:  # an empty document: the levels start at the top
        at = len(lines)
    step = 2
    block = []
    for depth, level in enumerate(missing):
        block.append(" " * (indent + depth * step) + f"{level}:\n")
    block.append(" " * (indent + len(missing) * step) + entry_line(alias, fields) + "\n")
    return "".join(lines[:at] + block + lines[at:])


def _line_after(node: yaml.Node) -> int:
    """Index of the line where text goes to follow `node`'s last item."""
    end = node.end_mark
    return end.line if end.column == 0 else end.line + 1
