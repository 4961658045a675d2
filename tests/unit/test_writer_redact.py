"""`loomrun.writer.redact.Redactor`: step output redacted read by read gives what redacting the
whole stream at once gives, wherever the reads cut it, and never lets a value through."""

from __future__ import annotations

import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from loomrun.writer.redact import Redactor

MARKER = re.compile(rb"\[REDACTED:SECRET_N\d\]")
# A small alphabet, so values overlap, repeat, prefix one another and straddle the cuts often.
ALPHABET = st.sampled_from([b"a", b"b", b"\n", b"\xff"])
BYTES = st.lists(ALPHABET, max_size=80).map(b"".join)
VALUES = st.lists(st.lists(ALPHABET, min_size=1, max_size=7).map(b"".join), min_size=1, max_size=3)


def redactor(values: list[bytes]) -> Redactor:
    red = Redactor()
    red.add([(f"N{i}", os.fsdecode(v)) for i, v in enumerate(values)])
    return red


def by_reads(red: Redactor, stream: bytes, cuts: list[int]) -> bytes:
    out, held, start = b"", b"", 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts} | {len(stream)}):
        head, held = red.split(held + stream[start:cut])
        assert len(held) < 2 * red.longest
        out += head
        start = cut
    return out + red.finish(held)


@settings(max_examples=400, deadline=None)
@given(values=VALUES, stream=BYTES, cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=12))
def test_reads_redact_as_the_whole_stream_does(values: list[bytes], stream: bytes, cuts: list[int]) -> None:
    red = redactor(values)
    assert red.pattern is not None
    whole = red.pattern.sub(lambda mt: red.markers[mt.group()], stream)
    out = by_reads(red, stream, cuts)
    assert out == whole
    raw = MARKER.sub(b"\x00", out)  # what is left of the stream's own bytes
    for value in red.markers:
        assert value not in raw


def test_a_value_cut_anywhere_is_found_and_nothing_else_is_held() -> None:
    pem = b"-----BEGIN KEY-----\nAAAA\nBBBB\n-----END KEY-----\n"
    red = redactor([pem])
    stream = b"before\n" + pem + b"after\n"
    for cut in range(len(stream) + 1):
        assert by_reads(red, stream, [cut]) == b"before\n[REDACTED:SECRET_N0]after\n"
    head, held = red.split(b"plain output\n")  # no value can start here: nothing waits
    assert (head, held) == (b"plain output\n", b"")
    head, held = red.split(b"tail -----BEG")
    assert (head, held) == (b"tail ", b"-----BEG")


def test_text_forms() -> None:
    red = Redactor()
    assert not red.active and red.text("x") == "x"
    red.add([("PEM", "-----BEGIN-----\nline-of-the-key-1\nab\n-----END-----\n"), ("NL", "tok\n"),
             ("BIN", os.fsdecode(b"n\xffx")), ("EMPTY", "")])
    assert red.active
    assert red.text("x tok y") == "x [REDACTED:SECRET_NL] y"  # without its line end
    assert red.text("line-of-the-key-1") == "[REDACTED:SECRET_PEM]"  # a long line of a multi-line value
    assert red.text("ab") == "ab"  # but not a short one
    assert red.text("n\ufffdx") == "[REDACTED:SECRET_BIN]"  # as a decoder with replacement reads it
    assert red.text(os.fsdecode(b"<n\xffx>")) == "<[REDACTED:SECRET_BIN]>"
    assert red.doc({"a": ["tok", 1, None], "b": {"c": "tok\n"}}) == {
        "a": ["[REDACTED:SECRET_NL]", 1, None], "b": {"c": "[REDACTED:SECRET_NL]"}}
    assert red.split(b"n\xffx\n") == (b"[REDACTED:SECRET_BIN]\n", b"")
