"""`workflow.rules` and its `if` expression language (spec §2.6). PURE; runs in the `loom` process.

Grammar (lowest precedence first):
    expr    := and ("||" and)*
    and     := unary ("&&" unary)*
    unary   := "!" unary | primary
    primary := "(" expr ")" | operand [("==" | "!=") operand | ("=~" | "!~") /regex/flags]
    operand := $VAR | ${VAR} | "string" | 'string' | null
A lone `$VAR` is true when the variable is set and non-empty. An unset variable equals `null`
and never matches a regex. Flags: `i` (ignore case), `m`, `s`.

Which variables an expression sees is `rule_context` (spec §2.6), low to high: the predefined
variables of the pipeline (`CI_COMMIT_BRANCH`, `CI_COMMIT_SHA`, ...), the root `variables`
(expanded against them and the environment), the process environment.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import NamedTuple

from loomrun.workflow.model import Workflow
from loomrun.workflow.variables import ExpansionError, resolve

Evaluator = Callable[[Mapping[str, str]], bool]
Operand = Callable[[Mapping[str, str]], "str | None"]

_TOKEN = re.compile(
    r"\s*(?:(?P<op>==|!=|=~|!~|&&|\|\||!|\(|\))"
    r"|\$\{(?P<bvar>[A-Za-z_][A-Za-z0-9_]*)\}|\$(?P<var>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\"(?P<dq>(?:[^\"\\]|\\.)*)\"|'(?P<sq>[^']*)'"
    r"|/(?P<re>(?:[^/\\]|\\.)*)/(?P<flags>[a-z]*)|(?P<null>null)\b)"
)
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}


class RuleSyntaxError(ValueError):
    """An `if` expression that does not parse; the message says where."""


class _Tok(NamedTuple):
    kind: str  # op | var | str | re | null | end
    text: str
    pos: int
    flags: str = ""


def _tokenize(expr: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        match = _TOKEN.match(expr, pos)
        if not match:
            start = len(expr[pos:]) - len(expr[pos:].lstrip()) + pos
            raise RuleSyntaxError(f"unexpected {expr[start:start + 10]!r} at column {start + 1}")
        start = match.start() + len(match.group(0)) - len(match.group(0).lstrip())
        if match.group("op"):
            toks.append(_Tok("op", match.group("op"), start))
        elif match.group("var") or match.group("bvar"):
            toks.append(_Tok("var", match.group("var") or match.group("bvar"), start))
        elif match.group("dq") is not None:
            toks.append(_Tok("str", re.sub(r"\\(.)", r"\1", match.group("dq")), start))
        elif match.group("sq") is not None:
            toks.append(_Tok("str", match.group("sq"), start))
        elif match.group("re") is not None:
            toks.append(_Tok("re", match.group("re"), start, match.group("flags")))
        else:
            toks.append(_Tok("null", "null", start))
        pos = match.end()
    toks.append(_Tok("end", "", len(expr)))
    return toks


class _Parser:
    def __init__(self, expr: str) -> None:
        self.toks = _tokenize(expr)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, what: str) -> RuleSyntaxError:
        tok = self.peek()
        found = "end of expression" if tok.kind == "end" else repr(tok.text)
        return RuleSyntaxError(f"expected {what} at column {tok.pos + 1}, found {found}")

    def parse(self) -> Evaluator:
        result = self.expr(0)
        if self.peek().kind != "end":
            raise self.fail("&&, || or the end")
        return result

    def expr(self, depth: int) -> Evaluator:
        if depth > 50:
            raise RuleSyntaxError("expression is nested too deeply")
        left = self.conj(depth)
        while self.peek().text == "||" and self.peek().kind == "op":
            self.take()
            right = self.conj(depth)
            left = (lambda a, b: lambda env: a(env) or b(env))(left, right)
        return left

    def conj(self, depth: int) -> Evaluator:
        left = self.unary(depth)
        while self.peek().text == "&&" and self.peek().kind == "op":
            self.take()
            right = self.unary(depth)
            left = (lambda a, b: lambda env: a(env) and b(env))(left, right)
        return left

    def unary(self, depth: int) -> Evaluator:
        tok = self.peek()
        if tok.kind == "op" and tok.text == "!":
            self.take()
            if depth > 50:
                raise RuleSyntaxError("expression is nested too deeply")
            inner = self.unary(depth + 1)
            return lambda env: not inner(env)
        if tok.kind == "op" and tok.text == "(":
            self.take()
            inner = self.expr(depth + 1)
            if self.peek().text != ")":
                raise self.fail('")"')
            self.take()
            return inner
        return self.comparison()

    def operand(self) -> Operand:
        tok = self.peek()
        if tok.kind == "var":
            self.take()
            name = tok.text
            return lambda env: env.get(name)
        if tok.kind == "str":
            self.take()
            text = tok.text
            return lambda env: text
        if tok.kind == "null":
            self.take()
            return lambda env: None
        raise self.fail("$VARIABLE, a quoted string or null")

    def comparison(self) -> Evaluator:
        left = self.operand()
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("==", "!="):
            self.take()
            right = self.operand()
            if tok.text == "==":
                return lambda env: left(env) == right(env)
            return lambda env: left(env) != right(env)
        if tok.kind == "op" and tok.text in ("=~", "!~"):
            self.take()
            pattern = self.regex()
            if tok.text == "=~":
                return lambda env: _search(pattern, left(env))
            return lambda env: not _search(pattern, left(env))
        return lambda env: bool(left(env))

    def regex(self) -> re.Pattern[str]:
        tok = self.peek()
        if tok.kind != "re":
            raise self.fail("a /regex/")
        self.take()
        flags = 0
        for flag in tok.flags:
            if flag not in _FLAGS:
                raise RuleSyntaxError(f"unknown regex flag {flag!r} at column {tok.pos + 1}")
            flags |= _FLAGS[flag]
        try:
            return re.compile(tok.text.replace("\\/", "/"), flags)
        except re.error as exc:
            raise RuleSyntaxError(f"invalid regex /{tok.text}/: {exc}") from None


def _search(pattern: re.Pattern[str], value: str | None) -> bool:
    return value is not None and pattern.search(value) is not None


def compile_expr(expr: str) -> Evaluator:
    """Parse an `if` expression; RuleSyntaxError says what is wrong and where."""
    if not expr.strip():
        raise RuleSyntaxError("empty expression")
    return _Parser(expr).parse()


def evaluate(expr: str, env: Mapping[str, str]) -> bool:
    return compile_expr(expr)(env)


def rule_context(wf: Workflow, predefined: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """What an `if` sees. `ExpansionError` when a root variable cannot be expanded (with the
    caller's environment it may grow past what `loom check` saw)."""
    values, errors = resolve(wf.variables, {**predefined, **env})
    if errors:
        raise ExpansionError(next(iter(errors.values())))
    return {**predefined, **values, **env}


def skip_reason(wf: Workflow, context: Mapping[str, str]) -> str | None:
    """None when the pipeline runs; else why not. The first matching rule decides (`when: never`
    skips); no rules: run; rules but none matching: skip."""
    if not wf.rules:
        return None
    for i, rule in enumerate(wf.rules, start=1):
        if rule.if_expr is None or evaluate(rule.if_expr, context):
            return None if rule.when != "never" else f"rule {i} matched with when: never"
    return "no rule matched"


def pipeline_runs(wf: Workflow, context: Mapping[str, str]) -> bool:
    return skip_reason(wf, context) is None
