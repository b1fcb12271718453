"""The `--where` language of `gemctl runs`: comparisons on a run's metrics, params, tags and attributes joined by
and / or / not and parentheses.

    metrics.`gem-synth-qa/accuracy` > 0.3 and params.stages.stage3.lr = 1e-5
    not (tags.gemctl.stage = stage1 or attributes.status != 'FINISHED')

A key is SECTION.NAME: SECTION is metrics, params, tags or attributes (metric, param, tag, attr accepted); NAME is
dotted words, or `backquoted` when it holds other characters. A value is a number, a 'quoted' or "quoted" string
(backslash escapes the quote), or a bare word. Operators: = (or ==), !=, <, <=, >, >=. Two numbers compare as
numbers (a param "1e-05" equals 1e-5), anything else as text; a key the run lacks makes its comparison false.

parse() returns a tree whose str() is its canonical text: parse(str(tree)) == tree. Any text that is not a query
raises QueryError (an InputError: one line, exit 2) and nothing else.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gem_stages.errors import InputError

SECTIONS = {"metrics": "metrics", "metric": "metrics", "params": "params", "param": "params", "tags": "tags",
            "tag": "tags", "attributes": "attributes", "attribute": "attributes", "attr": "attributes"}
OPS = ("<=", ">=", "!=", "==", "=", "<", ">")
KEYWORDS = ("and", "or", "not")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*")  # a dotted name, or a bare value
_NAME_PART = re.compile(r"[A-Za-z0-9_\-]+")
_NAME = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
_SECTION = re.compile(r"[A-Za-z]+")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)\b")
EXAMPLE = "metrics.vsi > 0.3 and params.stages.stage3.lr = 1e-5"


class QueryError(InputError):
    """A --where that does not parse: where and why, in one line."""


@dataclass(frozen=True)
class Compare:
    section: str  # metrics | params | tags | attributes
    name: str  # the key inside the section, e.g. stages.stage3.lr
    op: str  # = != < <= > >=
    value: float | str  # a number, or text

    def __str__(self) -> str:
        name = self.name if _is_plain_name(self.name) else "`" + self.name.replace("\\", "\\\\").replace(
            "`", "\\`") + "`"
        return f"{self.section}.{name} {self.op} {_value_text(self.value)}"


@dataclass(frozen=True)
class Not:
    term: Query

    def __str__(self) -> str:
        return f"not {_wrapped(self.term, Not)}"


@dataclass(frozen=True)
class And:
    left: Query
    right: Query

    def __str__(self) -> str:
        return f"{_wrapped(self.left, And)} and {_wrapped(self.right, Not)}"


@dataclass(frozen=True)
class Or:
    left: Query
    right: Query

    def __str__(self) -> str:
        return f"{_wrapped(self.left, Or)} or {_wrapped(self.right, And)}"


Query = Compare | Not | And | Or
_BINDS = {Or: 0, And: 1, Not: 2, Compare: 3}  # how tightly each binds


def _wrapped(q: Query, at_least: type) -> str:
    """q's text, in parentheses where it binds looser than its place needs."""
    return str(q) if _BINDS[type(q)] >= _BINDS[at_least] else f"({q})"


def _is_plain_name(name: str) -> bool:
    return all(_NAME_PART.fullmatch(p) for p in name.split("."))


def _value_text(value: float | str) -> str:
    if isinstance(value, float):
        return repr(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- parsing ---------------------------------------------------------------------------------------------------
def parse(text: str) -> Query:
    """The query `text` says, or QueryError."""
    if not isinstance(text, str) or not text.strip():
        raise _error(text if isinstance(text, str) else "", 0, "it is empty")
    p = _Parser(text)
    try:
        tree = p.expr()
    except RecursionError:
        raise _error(text, 0, "it nests too deeply") from None
    p.skip()
    if p.pos < len(text):
        raise _error(text, p.pos, f"unexpected {_shown(text[p.pos:p.pos + 12])}")
    return tree


def _shown(fragment: str) -> str:
    return repr(fragment)


def _error(text: str, pos: int, why: str) -> QueryError:
    # the user's text on one line whatever it holds (repr escapes newlines and control characters)
    return QueryError(f"--where {text!r} does not parse at character {pos + 1}: {why}; write comparisons like "
                      f"'{EXAMPLE}' joined by and/or/not and parentheses")


class _Parser:
    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def keyword(self, word: str) -> bool:
        self.skip()
        end = self.pos + len(word)
        if self.text[self.pos:end].lower() == word and not _continues(self.text, end):
            self.pos = end
            return True
        return False

    def expr(self) -> Query:
        left = self.conjunction()
        while self.keyword("or"):
            left = Or(left, self.conjunction())
        return left

    def conjunction(self) -> Query:
        left = self.negation()
        while self.keyword("and"):
            left = And(left, self.negation())
        return left

    def negation(self) -> Query:
        if self.keyword("not"):
            return Not(self.negation())
        self.skip()
        if self.text.startswith("(", self.pos):
            self.pos += 1
            inner = self.expr()
            self.skip()
            if not self.text.startswith(")", self.pos):
                raise _error(self.text, self.pos, "a '(' is not closed")
            self.pos += 1
            return inner
        return self.comparison()

    def comparison(self) -> Compare:
        start = self.pos
        m = _SECTION.match(self.text, self.pos)
        section = SECTIONS.get(m.group(0).lower()) if m else None
        if section is None or not self.text.startswith(".", m.end()):
            got = "the end" if start >= len(self.text) else _shown(self.text[start:start + 12])
            raise _error(self.text, start, f"expected a key such as metrics.NAME or params.NAME, got {got}")
        self.pos = m.end() + 1
        name = self.name()
        self.skip()
        op = next((o for o in OPS if self.text.startswith(o, self.pos)), None)
        if op is None:
            raise _error(self.text, self.pos, "expected an operator (= != < <= > >=) after the key")
        self.pos += len(op)
        return Compare(section, name, "=" if op == "==" else op, self.value())

    def name(self) -> str:
        if self.text.startswith("`", self.pos):
            return self.quoted("`")
        m = _NAME.match(self.text, self.pos)
        if not m:
            raise _error(self.text, self.pos, "expected a name after the section (backquote it if it holds "
                                              "other characters: metrics.`a/b`)")
        self.pos = m.end()
        return m.group(0)

    def quoted(self, quote: str) -> str:
        start, out, i = self.pos, [], self.pos + 1
        while i < len(self.text):
            c = self.text[i]
            if c == "\\" and i + 1 < len(self.text):
                out.append(self.text[i + 1])
                i += 2
            elif c == quote:
                self.pos = i + 1
                return "".join(out)
            else:
                out.append(c)
                i += 1
        raise _error(self.text, start, f"the {quote} quote is not closed")

    def value(self) -> float | str:
        self.skip()
        if self.pos < len(self.text) and self.text[self.pos] in "'\"":
            return self.quoted(self.text[self.pos])
        m = _NUMBER.match(self.text, self.pos)
        if m and not _continues(self.text, m.end()):
            self.pos = m.end()
            return float(m.group(0))
        m = _WORD.match(self.text, self.pos)
        if not m or m.group(0).lower() in KEYWORDS:
            got = "the end" if self.pos >= len(self.text) else _shown(self.text[self.pos:self.pos + 12])
            raise _error(self.text, self.pos, f"expected a value (a number, a 'quoted' text or a word), got {got}")
        self.pos = m.end()
        return m.group(0)


def _continues(text: str, end: int) -> bool:
    """A word or number goes on past `end` (so `order` is not `or` + `der`)."""
    return end < len(text) and (text[end].isalnum() or text[end] in "_.-`")


# --- evaluation ------------------------------------------------------------------------------------------------
def matches(q: Query, row: dict[str, dict[str, object]]) -> bool:
    """Whether a run, as {"metrics": {...}, "params": {...}, "tags": {...}, "attributes": {...}}, satisfies q."""
    if isinstance(q, And):
        return matches(q.left, row) and matches(q.right, row)
    if isinstance(q, Or):
        return matches(q.left, row) or matches(q.right, row)
    if isinstance(q, Not):
        return not matches(q.term, row)
    have = row.get(q.section, {}).get(q.name)
    if have is None:
        return False
    a, b = _number(have), _number(q.value)
    if a is None or b is None:  # text: compare as the user wrote it
        a, b = str(have), q.value if isinstance(q.value, str) else _value_text(q.value).strip("'")
    if q.op == "=":
        return a == b
    if q.op == "!=":
        return a != b
    if isinstance(a, float) and (math.isnan(a) or math.isnan(b)):
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[q.op]


def _number(v: object) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and _NUMBER.fullmatch(v.strip()):
        return float(v)
    return None


def keys(q: Query) -> set[tuple[str, str]]:
    """The (section, name) pairs q reads."""
    if isinstance(q, Compare):
        return {(q.section, q.name)}
    if isinstance(q, Not):
        return keys(q.term)
    return keys(q.left) | keys(q.right)
