"""Safe arithmetic expressions: the rules of the architecture table (estimator/families/*.toml).

A family record states its facts as small Python expressions over config keys and named dimensions,
e.g. ``"num_key_value_heads or heads"`` or ``"'sliding_attention' if (i + 1) % 6 else
'full_attention'"``. They are parsed once with :mod:`ast` and evaluated by walking the tree: only
constants, names, arithmetic, comparisons, boolean logic, conditional expressions, subscripts, tuple
or list literals and a few pure functions (`int`, `min`, `max`, `len`, `bool`, `abs`, `round`,
`ceil_div`, `sum`) are allowed. Nothing is ever passed to `eval`.
"""
from __future__ import annotations

import ast
import math
import operator
from functools import lru_cache
from typing import Any, Callable, Mapping

from .errors import MemcalError

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_, ast.IsNot: operator.is_not,
}
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "int": int, "min": min, "max": max, "len": len, "bool": bool, "abs": abs, "round": round, "sum": sum,
    "ceil_div": lambda a, b: -(-a // b), "ceil": math.ceil, "str": str,
    # get(mapping, key, default): a key of a nested config table (rope_parameters, quantization_config)
    "get": lambda m, k, d=None: m.get(k, d) if isinstance(m, Mapping) else d,
}


class ExprError(MemcalError):
    """An expression of the table is malformed or names something it cannot see."""


@lru_cache(maxsize=None)
def parse(text: str) -> ast.expr:
    """Parse and check one expression (cached: every record's rules are parsed once per process)."""
    try:
        tree = ast.parse(str(text).strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExprError(f"bad expression {text!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            raise ExprError(f"bad expression {text!r}: only {', '.join(sorted(FUNCTIONS))} may be called")
        if isinstance(node, (ast.Attribute, ast.Lambda, ast.NamedExpr, ast.Starred, ast.Await, ast.Yield,
                             ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            raise ExprError(f"bad expression {text!r}: {type(node).__name__} is not allowed")
    return tree


def names(text: str) -> set[str]:
    """The free names an expression reads (functions excluded)."""
    tree = parse(text)
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - called


def evaluate(text: Any, scope: Mapping[str, Any]) -> Any:
    """The value of `text` in `scope`. Non-strings (TOML numbers, booleans) are returned as they are."""
    if not isinstance(text, str):
        return text
    try:
        return _eval(parse(text), scope)
    except ExprError:
        raise
    except KeyError as exc:
        raise ExprError(f"expression {text!r} reads {exc.args[0]!r}, which is not defined here") from None
    except (TypeError, ValueError, ZeroDivisionError, IndexError) as exc:
        raise ExprError(f"expression {text!r} failed: {exc}") from None


def _eval(node: ast.expr, scope: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in ("None", "True", "False"):
            return {"None": None, "True": True, "False": False}[node.id]
        return scope[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, scope), _eval(node.right, scope))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, scope))
    if isinstance(node, ast.BoolOp):  # short-circuit, returning the deciding operand as Python does
        value = None
        for operand in node.values:
            value = _eval(operand, scope)
            if isinstance(node.op, ast.And) and not value or isinstance(node.op, ast.Or) and value:
                return value
        return value
    if isinstance(node, ast.Compare):
        left = _eval(node.left, scope)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, scope)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body if _eval(node.test, scope) else node.orelse, scope)
    if isinstance(node, ast.Subscript):
        return _eval(node.value, scope)[_eval(node.slice, scope)]
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_eval(e, scope) for e in node.elts)
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](*(_eval(a, scope) for a in node.args))
    raise ExprError(f"unsupported expression element {type(node).__name__}")
