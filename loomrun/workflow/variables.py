"""Variable expansion (spec §2.5). PURE; used at run time with the predefined variables as `base`.

`$NAME` and `${NAME}` expand from variables resolved before (base included), `$$` is a literal `$`,
unknown names stay as written. Script entries are never expanded here: the shell does that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_REF = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand_value(value: str, known: Mapping[str, str]) -> str:
    """One value expanded against `known`."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name is None:
            return "$"
        return known.get(name, match.group(0))

    return _REF.sub(sub, value)


def expand(pairs: Sequence[tuple[str, str]], base: Mapping[str, str]) -> dict[str, str]:
    """`base` plus `pairs` in order, each value expanded from what was resolved before it."""
    resolved = dict(base)
    for name, raw in pairs:
        resolved[name] = expand_value(raw, resolved)
    return resolved
