"""The GSM8k calculator: arithmetic inside `<<expression=result>>` annotations, evaluated safely.

GSM8k solutions annotate each computation as `<<48/2=24>>24`. With the calculator on, when a
model has written `<<expression=`, the result is computed here and inserted as if the model had
written it (the original GSM8k release did this with Python's `eval`; here only numbers,
+ - * / // % ** and parentheses are accepted, parsed with `ast`, never executed as code).
"""

from __future__ import annotations

import ast
import math
import operator

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_EXPONENT = 64  # refuses 9**9**9 and friends
MAX_LENGTH = 200


def evaluate(expression: str) -> float | None:
    """The value of an arithmetic expression (commas in numbers allowed), or None when it is
    anything else, too long, or undefined (division by zero, a huge power)."""
    text = expression.replace(",", "").replace("$", "").strip()
    if not text or len(text) > MAX_LENGTH:
        return None
    try:
        tree = ast.parse(text, mode="eval")
        value = _value(tree.body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None
    return value if value is not None and math.isfinite(value) else None


def _value(node) -> float | None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            return None
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        operand = _value(node.operand)
        return None if operand is None else _UNARY[type(node.op)](operand)
    return None  # names, calls, attributes, strings, ...: not arithmetic


def format_number(value: float) -> str:
    """As GSM8k writes results: integers without a decimal point, others to 6 places."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def insertion(text: str) -> str | None:
    """The result to insert when `text` ends with an open `<<expression=`, else None."""
    if not text.endswith("="):
        return None
    start = text.rfind("<<")
    if start < 0 or text.rfind(">>") > start:
        return None
    value = evaluate(text[start + 2 : -1])
    return None if value is None else format_number(value)
