"""Secret redaction for everything the writer writes or prints (spec §7.3). Runs in the writer process.

Step output is redacted on its bytes, before it is decoded or cut into lines, so a value that
holds newlines (a PEM key), ends with one, or is not UTF-8 is still found. A value can arrive split
across two reads of a pipe: `split` hands back what is safe to write and holds the few raw bytes at
the end that could be the start of a value, until the next read (or EOF) decides. Text that reaches
the writer as `str` (commands, messages, section lines, documents) goes through `text`.

A run without secrets never builds a pattern: `Redactor.active` is False and step output takes the
path it took before redaction existed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

# A line of a multi-line value is redacted on its own in text (section lines arrive one line at a
# time) when it is at least this long: shorter lines ("-----", "}") say nothing about the value.
MIN_LINE = 8


def _forms(value: bytes) -> list[bytes]:
    """The value as printed whole, and without its line end (`$(cat file)` drops it)."""
    forms = [value]
    bare = value.rstrip(b"\r\n")
    if bare and bare != value:
        forms.append(bare)
    return forms


class Redactor:
    """Every secret value of the run (they only ever grow), as a bytes pattern and as text pairs."""

    __slots__ = ("active", "longest", "markers", "pattern", "texts")

    def __init__(self) -> None:
        self.markers: dict[bytes, bytes] = {}
        self.texts: list[tuple[str, str]] = []  # (text form of a value, marker), longest first
        self.pattern: re.Pattern[bytes] | None = None
        self.longest = 0
        self.active = False

    def add(self, pairs: Iterable[tuple[str, str]]) -> None:
        """`(name, value)` as `m.Redact` carries them. A value read from the environment that is not
        UTF-8 is a str with surrogate escapes: `os.fsencode` gives back its real bytes."""
        texts = dict(self.texts)
        for name, value in pairs:
            if not value:
                continue
            raw = os.fsencode(value)
            marker = f"[REDACTED:SECRET_{name}]"
            for form in _forms(raw):
                self.markers.setdefault(form, marker.encode())
            for text in _text_forms(value, raw):
                texts.setdefault(text, marker)
        if not self.markers:
            return
        ordered = sorted(self.markers, key=len, reverse=True)  # the longest value wins where two overlap
        self.pattern = re.compile(b"|".join(re.escape(v) for v in ordered))
        self.longest = len(ordered[0])
        self.texts = sorted(texts.items(), key=lambda kv: len(kv[0]), reverse=True)
        self.active = True

    # -- bytes (step output) -------------------------------------------------------------------
    def split(self, data: bytes) -> tuple[bytes, bytes]:
        """(`head`, `held`): `head` is `data` redacted up to where a value might still be starting;
        `held` is the raw rest, to be put before the next read.

        `held` starts at the earliest suffix of `data` that is a proper prefix of some value, or
        earlier, at the start of a match that reaches into that suffix (the next scan decides it
        with more bytes, as a scan of the whole stream would). Nothing leaks: a value whole inside
        `head` is a match (one scan, leftmost, longest value first), and a value that began in
        `head` and ended in a later read would make a suffix of `data` starting in `head` a proper
        prefix of that value, which is where `held` starts at the latest."""
        assert self.pattern is not None
        spans = [mt.span() for mt in self.pattern.finditer(data)]
        cut = len(data) - self._prefix_len(data, len(data) - self.longest + 1)
        while spans and spans[-1][1] > cut:
            cut = min(cut, spans.pop()[0])
        if not spans:
            return (data, b"") if cut == len(data) else (data[:cut], data[cut:])
        markers = self.markers
        pieces: list[bytes] = []
        pos = 0
        for start, end in spans:
            pieces.append(data[pos:start])
            pieces.append(markers[data[start:end]])
            pos = end
        pieces.append(data[pos:cut])
        return b"".join(pieces), data[cut:]

    def _prefix_len(self, data: bytes, start: int) -> int:
        """Length of the longest suffix of `data` beginning at or after `start` that is a proper
        prefix of a value (0 if none). Only positions holding a value's first byte are tried."""
        start = max(start, 0)
        best = 0
        for value in self.markers:
            first = value[:1]
            pos = data.find(first, max(start, len(data) - len(value) + 1))
            while pos >= 0:
                tail = len(data) - pos
                if tail <= best:
                    break
                if value.startswith(data[pos:]):
                    best = tail
                    break
                pos = data.find(first, pos + 1)
        return best

    def finish(self, held: bytes) -> bytes:
        """The held bytes at EOF: no value will complete them (a shorter one may be whole inside)."""
        if not held:
            return held
        assert self.pattern is not None
        markers = self.markers
        return self.pattern.sub(lambda mt: markers[mt.group()], held)

    # -- text ----------------------------------------------------------------------------------
    def text(self, text: str) -> str:
        for value, marker in self.texts:
            if value in text:
                text = text.replace(value, marker)
        return text

    def doc(self, doc: Any) -> Any:
        """A document (dicts, lists, strings) with every string redacted."""
        if not self.active:
            return doc
        if isinstance(doc, str):
            return self.text(doc)
        if isinstance(doc, list):
            return [self.doc(x) for x in doc]
        if isinstance(doc, dict):
            return {k: self.doc(v) for k, v in doc.items()}
        return doc


def _text_forms(value: str, raw: bytes) -> list[str]:
    """What a value looks like once it is text: as given (surrogate escapes and all), decoded with
    replacement characters (how undecodable output reads), without its line end, and the longer
    lines of a multi-line value (line-by-line text never holds the value whole)."""
    forms = [value, raw.decode("utf-8", "replace")]
    lines: list[str] = []
    for form in list(forms):
        bare = form.rstrip("\r\n")
        if bare:
            forms.append(bare)
        if "\n" in bare:
            lines.extend(ln.rstrip("\r") for ln in bare.split("\n"))
    forms.extend(ln for ln in lines if len(ln) >= MIN_LINE)
    return list(dict.fromkeys(f for f in forms if f))
