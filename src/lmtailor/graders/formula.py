"""The `calculate_output` formulas of multi graders, parsed with Python's `ast` and evaluated by walking the
tree: numbers, the sub-graders' names, + - * / ^ (power) and ** , parentheses, and the functions OpenAI
documents (min, max, abs, floor, ceil, exp, sqrt, log). Nothing is ever passed to `eval`."""

from __future__ import annotations

import ast
import math
import operator

FUNCTIONS = {"min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
             "sqrt": math.sqrt, "log": math.log}  # fmt: skip
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.Pow: operator.pow, ast.BitXor: operator.pow}  # fmt: skip
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class FormulaError(ValueError):
    """A formula that does not parse, or uses something other than numbers, names and the functions."""

    def __init__(self, message: str, variable: bool = False):
        super().__init__(message)
        self.variable = variable  # an unknown name (invalid_variable_error), else a parse error


def parse(formula: str, names: set[str]) -> ast.Expression:
    """The checked tree of a formula whose free names must all be in `names`."""
    try:
        tree = ast.parse(formula, mode="eval")
    except SyntaxError as e:
        raise FormulaError(f"calculate_output {formula!r} does not parse: {e.msg}") from None
    for node in ast.walk(tree):
        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        if isinstance(node, ast.Name) and (
            node.id not in names if id(node) not in called else node.id not in FUNCTIONS
        ):
            known = ", ".join(sorted(names)) or "none"
            raise FormulaError(f"calculate_output uses {node.id!r}, which is not a grader here (graders: {known})",
                               variable=True)  # fmt: skip
        allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Call, ast.Load,
                   *BINARY, *UNARY)  # fmt: skip
        if not isinstance(node, allowed):
            raise FormulaError(f"calculate_output may not use {type(node).__name__} ({ast.unparse(node)!r})")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
            raise FormulaError(f"calculate_output: {node.value!r} is not a number")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
                                               and not node.keywords):  # fmt: skip
            raise FormulaError(f"calculate_output: only {', '.join(FUNCTIONS)} may be called")
    return tree


def evaluate(formula: str, values: dict[str, float]) -> float:
    tree = parse(formula, set(values))

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return float(values[node.id])
        if isinstance(node, ast.UnaryOp):
            return UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.BinOp):
            return BINARY[type(node.op)](walk(node.left), walk(node.right))
        return float(FUNCTIONS[node.func.id](*(walk(a) for a in node.args)))

    try:
        return float(walk(tree))
    except (ArithmeticError, ValueError, TypeError, LookupError) as e:
        raise FormulaError(f"calculate_output {formula!r}: {e}") from None
