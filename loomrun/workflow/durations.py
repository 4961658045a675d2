"""Durations and memory sizes as written in workflows (`timeout`, `limits`). PURE.

Used by validation (the `loom` process) and by workers (the numbers they enforce).
"""

from __future__ import annotations

import math
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_MEMORY_FACTOR = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration(value: object) -> float:
    """`"1h 30m"`, `"90s"`, `"10m"`, `"1.5h"` or integer seconds -> seconds (> 0). ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"90s\", \"10m\", \"1h 30m\" or integer seconds")
    if isinstance(value, int):
        seconds = float(value) if value < 1 << 64 else math.inf
    elif isinstance(value, str):
        seconds = _duration_text(value.strip())
    else:
        raise ValueError("expected a duration like \"90s\", \"10m\", \"1h 30m\" or integer seconds")
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return seconds  # math.inf past float's range: the caller's upper bound rejects it


def _duration_text(text: str) -> float:
    if text.isdigit():
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if text[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"invalid duration {text!r}; write e.g. \"90s\", \"10m\" or \"1h 30m\"")
    return total


def parse_memory(value: object) -> int:
    """`"2g"`, `"512m"`, `"100k"`, `"1.5GiB"` or integer bytes -> bytes (> 0). ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a memory size like \"512m\" or \"2g\"")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _MEMORY.fullmatch(value.strip())
        if not match:
            raise ValueError(f"invalid memory size {value!r}; write e.g. \"512m\" or \"2g\"")
        number = float(match.group(1)) * _MEMORY_FACTOR[match.group(2).lower()]
        if number == math.inf:
            raise ValueError(f"memory size {value!r} is too large")
        size = int(number)
    else:
        raise ValueError("expected a memory size like \"512m\" or \"2g\"")
    if size <= 0:
        raise ValueError("a memory size must be greater than zero")
    return size
