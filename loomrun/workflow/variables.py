"""Variable expansion (spec §2.5). PURE; used by `loom check` (no base) and by the supervisor (the
predefined variables, and for a host job the caller's environment, as the base).

`$NAME` and `${NAME}` expand, `$$` is a literal `$`, unknown names stay as written. A job's variables
refer to each other whatever their order in the file: each is expanded from the others on demand.
A variable that names itself means the value underneath it (a predefined variable, or for a host
job the caller's), so `PATH: "$PATH:/opt/bin"` extends the caller's PATH **[decision]**; a longer
loop (`A: $B`, `B: $A`) is a cycle. Script entries are never expanded here: the shell does that.

Everything is bounded, whatever the input: a value is built piece by piece and given up the moment
it passes its bound (forty variables that each double the one before would otherwise need 2^40
times the first). A variable becomes an environment string, so its bound is the kernel's 128 KiB;
what variables expand into elsewhere (paths, cache keys, images) is bounded by `MAX_VALUE`. A
variable that uses a failed one fails silently (one error per root cause), and the walk over
references is iterative (a chain of ten thousand variables cannot hit the recursion limit).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

MAX_VALUE = 1 << 20  # an expanded value past this is an error (spec §2.5 [decision])
# The kernel refuses one "NAME=value" environment string (or one argument) longer than
# MAX_ARG_STRLEN (32 pages), terminating NUL included: execve fails with E2BIG.
MAX_ARG_STRLEN = 32 * 4096

_REF = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class ExpansionError(ValueError):
    """A value that cannot be expanded; the message names the variable (or says what grew)."""


TOO_LONG = f"expands to more than {MAX_VALUE >> 20} MiB"


def env_string_size(name: str, value: str) -> int:
    """Bytes the kernel counts for `NAME=value` in an environment block (its NUL included)."""
    return len(name.encode()) + len(value.encode("utf-8", "surrogateescape")) + 2


def env_limit(name: str) -> int:
    """The most bytes `name`'s value may have in an environment block ("NAME=value" and a NUL)."""
    return MAX_ARG_STRLEN - len(name.encode()) - 2


def env_too_long(name: str) -> str:
    return (f'variable "{name}" expands to more than {MAX_ARG_STRLEN // 1024} KiB, the most one environment '
            "variable may hold (the kernel's MAX_ARG_STRLEN)")


def refs(value: str) -> Iterable[str]:
    """Names a value refers to (`$$` is not a reference)."""
    for match in _REF.finditer(value):
        name = match.group(1) or match.group(2)
        if name is not None:
            yield name


def expand_value(value: str, known: Mapping[str, str], limit: int = MAX_VALUE) -> str:
    """One value expanded against `known`; `ExpansionError` when the result passes `limit` chars."""
    parts: list[str] = []
    size = pos = 0
    for match in _REF.finditer(value):
        name = match.group(1) or match.group(2)
        piece = "$" if name is None else known.get(name, match.group(0))
        literal = value[pos:match.start()]
        size += len(literal) + len(piece)
        if size > limit:
            raise ExpansionError(TOO_LONG)
        parts += (literal, piece)
        pos = match.end()
    if pos == 0:
        return value  # nothing to expand: the common case costs one scan
    parts.append(value[pos:])
    return "".join(parts)


def resolve(pairs: Sequence[tuple[str, str]], base: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Expand every variable of `pairs` (a later pair of the same name wins) against each other and
    `base`. Each becomes an environment variable, so each is bounded by what the kernel passes to a
    process (`env_limit`). Returns (values, errors): `errors` maps a name to its message and holds
    only root causes; a variable that uses a failed one is left out of both."""
    raw = dict(pairs)
    done: dict[str, str] = {}
    errors: dict[str, str] = {}
    failed: set[str] = set()
    for start in raw:
        if start not in done and start not in failed:
            _resolve_from(start, raw, base, done, errors, failed)
    return done, errors


def _resolve_from(start: str, raw: Mapping[str, str], base: Mapping[str, str],
                  done: dict[str, str], errors: dict[str, str], failed: set[str]) -> None:
    """Depth-first from `start`, with an explicit stack: a name is built once every variable it
    refers to is built (or has failed)."""
    stack: list[tuple[str, list[str]]] = [(start, _deps(start, raw))]
    on_stack = {start}
    while stack:
        name, todo = stack[-1]
        while todo and (todo[-1] in done or todo[-1] in failed):
            todo.pop()
        if todo:
            nxt = todo.pop()
            if nxt in on_stack:
                loop = [n for n, _ in stack]
                cycle = [*loop[loop.index(nxt):], nxt]
                errors[cycle[0]] = "variable cycle: " + " -> ".join(cycle)
                failed.update(cycle)
                continue
            stack.append((nxt, _deps(nxt, raw)))
            on_stack.add(nxt)
            continue
        stack.pop()
        on_stack.discard(name)
        if name in failed:
            continue
        if any(dep in failed for dep in _deps(name, raw)):
            failed.add(name)  # its error is the one it depends on
            continue
        limit = env_limit(name)
        try:
            value = expand_value(raw[name], _Known(name, done, base), limit)
        except ExpansionError:
            value = None
        if value is None or len(value.encode("utf-8", "surrogateescape")) > limit:
            errors[name] = env_too_long(name)
            failed.add(name)
        else:
            done[name] = value


def _deps(name: str, raw: Mapping[str, str]) -> list[str]:
    return [ref for ref in refs(raw[name]) if ref in raw and ref != name]


class _Known(Mapping[str, str]):
    """What `$X` means inside variable `name`: another variable's expanded value, else the base;
    `$name` itself always means the base (the value underneath)."""

    __slots__ = ("base", "done", "name")

    def __init__(self, name: str, done: Mapping[str, str], base: Mapping[str, str]) -> None:
        self.name, self.done, self.base = name, done, base

    def __getitem__(self, key: str) -> str:
        if key != self.name and key in self.done:
            return self.done[key]
        return self.base[key]

    def __iter__(self) -> Iterator[str]:  # never iterated: expansion only looks names up
        return iter(())

    def __len__(self) -> int:
        return 0
