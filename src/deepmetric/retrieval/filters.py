"""Metadata filters for search (``--where``, ``query(..., where=...)``): a small, safe subset of Python expression
syntax that is also valid Milvus boolean-expression syntax.

    category == 'shoes'                       price < 50 and colour in ['red', 'blue']
    not (brand == "acme") or label != 3       id not in ['/data/a.png']

Allowed: comparisons of a field with a literal (``==  !=  <  <=  >  >=``, either side), ``in [...]`` and
``not in [...]`` (lists of literals), ``and``, ``or``, ``not``, parentheses, string, integer, float and boolean
literals (a leading minus too), and field names: the item's metadata columns, ``label`` and ``id``. The text is parsed
with `ast` (never evaluated); anything else — calls, attributes, arithmetic, chained comparisons, a field compared
with a field, an unknown field — is a `ConfigError` naming the text, the column and the known fields.

Semantics (SQL's and Milvus's three-valued logic): a comparison on a field the item has no value for is *unknown*;
``not`` keeps unknown unknown, ``and`` is false when any part is false, ``or`` true when any part is true, and an item
matches only when the whole filter is true. So an item without a ``colour`` matches neither ``colour == 'red'`` nor
``colour != 'red'`` nor ``not (colour == 'red')``. Ordering comparisons between a string and a number are false.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable, Iterable

import numpy as np

from ..errors import ConfigError

SYNTAX = ("comparisons (== != < <= > >=) of a field with a string or number, in [...], not in [...], and, or, not, "
          "parentheses")  # fmt: skip
_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.In: "in",
        ast.NotIn: "not in"}  # fmt: skip
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_DESCRIBE = {ast.Call: "a function call", ast.Attribute: "an attribute", ast.BinOp: "arithmetic",
             ast.Subscript: "a subscript", ast.Lambda: "a lambda", ast.IfExp: "an if-expression",
             ast.Dict: "a dict", ast.Set: "a set", ast.Tuple: "a tuple (use [...] after in)",
             ast.JoinedStr: "an f-string", ast.NamedExpr: "an assignment"}  # fmt: skip


class Filter:
    """A parsed filter: `mask` evaluates it over columns of values, `milvus` writes it as a Milvus expression."""

    def __init__(self, text: str, tree: tuple):
        self.text, self.tree = text, tree

    @property
    def fields(self) -> set[str]:
        """The field names the filter uses."""
        return set(_fields(self.tree))

    def __repr__(self) -> str:
        return f"Filter({self.text!r})"

    def mask(self, column: Callable[[str], list], n: int) -> np.ndarray:
        """Which of ``n`` items match: ``column(field)`` gives the field's N values (None: no value)."""
        cache: dict[str, list] = {}

        def get(field: str) -> list:
            if field not in cache:
                cache[field] = column(field)
            return cache[field]

        true, _unknown = _mask(self.tree, get, n)
        return true

    def matches(self, item: dict) -> bool:
        """Whether one item (a dict of field → value) matches."""
        return bool(self.mask(lambda f: [item.get(f)], 1)[0])

    def milvus(self, name: Callable[[str], str] = str, value: Callable[[str, object], object] | None = None) -> str:
        """The filter as a Milvus boolean expression; ``name`` maps a field to its Milvus field, ``value(field,
        literal)`` a literal to its stored form (e.g. an image path to the stored relative one)."""
        return _milvus(self.tree, name, value or (lambda f, v: v))


def parse(text: str, known: Iterable[str]) -> Filter:
    """Parse ``text`` (see the module doc); a syntax error, a construct outside the subset or a field not in
    ``known`` is a `ConfigError` naming the text, the column and the known fields."""
    known = sorted(set(known))
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"where {text!r}: give a filter such as \"category == 'shoes'\" ({SYNTAX})")
    source = text.strip()
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError as e:
        column = e.offset or 1
        raise ConfigError(f"where {text!r} does not parse: {e.msg} at column {column} (near "
                          f"{source[max(0, column - 1):column + 9]!r}); filters use {SYNTAX}") from None  # fmt: skip
    return Filter(text, _convert(node, source, text, known))


def _column(source: str, node: ast.AST) -> int:
    """1-based character column of ``node`` (ast gives UTF-8 byte offsets)."""
    return len(source.encode()[: node.col_offset].decode(errors="ignore")) + 1


def _reject(source: str, text: str, node: ast.AST, what: str) -> ConfigError:
    return ConfigError(f"where {text!r}: {what} at column {_column(source, node)} is not allowed; filters use {SYNTAX}")


def _convert(node: ast.AST, source: str, text: str, known: list[str]) -> tuple:
    """The AST as nested tuples: ("and"|"or", [parts]), ("not", part), ("cmp", field, op, literal)."""
    if isinstance(node, ast.BoolOp):
        op = "and" if isinstance(node.op, ast.And) else "or"
        return (op, [_convert(v, source, text, known) for v in node.values])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ("not", _convert(node.operand, source, text, known))
    if isinstance(node, ast.Compare):
        return _compare(node, source, text, known)
    if isinstance(node, ast.Name | ast.Constant):
        raise _reject(source, text, node, f"a bare {'field' if isinstance(node, ast.Name) else 'literal'} "
                                          f"{ast.get_source_segment(source, node)!r}")  # fmt: skip
    raise _reject(source, text, node, _DESCRIBE.get(type(node), f"{type(node).__name__}"))


def _compare(node: ast.Compare, source: str, text: str, known: list[str]) -> tuple:
    if len(node.ops) != 1:
        raise _reject(source, text, node, "a chained comparison (write a < x and x < b)")
    op = _OPS.get(type(node.ops[0]))
    if op is None:
        raise _reject(source, text, node, f"the operator {type(node.ops[0]).__name__} (is / is not)")
    left, right = node.left, node.comparators[0]
    if op in ("in", "not in"):
        if not isinstance(left, ast.Name):
            raise _reject(source, text, left, "something other than a field before `in`")
        if not isinstance(right, ast.List):
            raise _reject(source, text, right, "something other than a [list] after `in`")
        values = [_literal(v, source, text) for v in right.elts]
        return ("cmp", _field(left, source, text, known), op, values)
    if isinstance(left, ast.Name) and not isinstance(right, ast.Name):
        return ("cmp", _field(left, source, text, known), op, _literal(right, source, text))
    if isinstance(right, ast.Name) and not isinstance(left, ast.Name):
        return ("cmp", _field(right, source, text, known), _FLIP[op], _literal(left, source, text))
    if isinstance(left, ast.Name):
        raise _reject(source, text, node, "a comparison of two fields")
    _literal(left, source, text), _literal(right, source, text)  # names what is not a literal, if anything
    raise _reject(source, text, node, "a comparison without a field")


def _field(node: ast.Name, source: str, text: str, known: list[str]) -> str:
    if node.id not in known:
        raise ConfigError(f"where {text!r}: unknown field {node.id!r} at column {_column(source, node)}; the known "
                          f"fields are {', '.join(known) or 'none'}")  # fmt: skip
    return node.id


def _literal(node: ast.AST, source: str, text: str):
    """A string, int, float or bool literal (a unary minus allowed on numbers)."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
        if not (isinstance(node, ast.Constant) and type(node.value) in (int, float)):
            raise _reject(source, text, node, "a minus before something other than a number")
    if isinstance(node, ast.Constant) and type(node.value) in (str, int, float, bool):
        value = node.value
        if type(value) is float and not math.isfinite(value):
            raise _reject(source, text, node, f"the non-finite number {value!r}")
        return sign * value if sign < 0 else value
    if isinstance(node, ast.Name):
        raise _reject(source, text, node, f"the field {node.id!r} where a literal belongs")
    what = "None" if isinstance(node, ast.Constant) and node.value is None else None
    raise _reject(source, text, node, what or _DESCRIBE.get(type(node), f"{type(node).__name__}"))


def _fields(tree: tuple):
    if tree[0] in ("and", "or"):
        for part in tree[1]:
            yield from _fields(part)
    elif tree[0] == "not":
        yield from _fields(tree[1])
    else:
        yield tree[1]


# ------------------------------------------------------------------------------------------ evaluation
def _number(v) -> bool:
    return type(v) in (int, float, np.int64, np.float64)


def _equal(a, b) -> bool:
    return (a == b) if _number(a) == _number(b) else False


def _order(op: str, a, b) -> bool:
    if a is None or _number(a) != _number(b) or isinstance(a, bool) != isinstance(b, bool):
        return False
    return _ORDER[op](a, b)


def _compare_one(op: str, value, literal) -> bool:
    if op == "==":
        return _equal(value, literal)
    if op == "!=":
        return not _equal(value, literal)
    if op == "in":
        return any(_equal(value, v) for v in literal)
    if op == "not in":
        return not any(_equal(value, v) for v in literal)
    return _order(op, value, literal)


def _mask(tree: tuple, get: Callable[[str], list], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(true, unknown)`` per item (false where neither)."""
    kind = tree[0]
    if kind in ("and", "or"):
        parts = [_mask(p, get, n) for p in tree[1]]
        true = np.logical_and.reduce([t for t, _ in parts]) if kind == "and" else np.logical_or.reduce(
            [t for t, _ in parts])  # fmt: skip
        false = [~t & ~u for t, u in parts]
        false = np.logical_or.reduce(false) if kind == "and" else np.logical_and.reduce(false)
        return true, ~true & ~false
    if kind == "not":
        true, unknown = _mask(tree[1], get, n)
        return ~true & ~unknown, unknown
    _, field, op, literal = tree
    values = get(field)
    unknown = np.fromiter((v is None for v in values), dtype=bool, count=n)
    true = np.fromiter((v is not None and _compare_one(op, v, literal) for v in values), dtype=bool, count=n)
    return true, unknown


# --------------------------------------------------------------------------------------------- milvus
def _milvus_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _milvus(tree: tuple, name: Callable, value: Callable) -> str:
    kind = tree[0]
    if kind in ("and", "or"):
        return "(" + f" {kind} ".join(_milvus(p, name, value) for p in tree[1]) + ")"
    if kind == "not":
        return f"(not {_milvus(tree[1], name, value)})"
    _, field, op, literal = tree
    if op in ("in", "not in"):
        items = ", ".join(_milvus_literal(value(field, v)) for v in literal)
        return f"({name(field)} {op} [{items}])"
    return f"({name(field)} {op} {_milvus_literal(value(field, literal))})"
