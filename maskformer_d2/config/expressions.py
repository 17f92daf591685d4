"""The official configs' multi-scale list expressions
(``!!python/object/apply:eval ["[int(x * 0.1 * 512) for x in range(5, 21)]"]``), evaluated by
walking their syntax tree within budgets instead of by ``eval``.
"""
import ast
import contextlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

import yaml

# ----------------------------------------------------------------------------- list expressions
_EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
#: budgets of one expression (the official ones: 80 characters, depth 8, 32 steps, 12-bit numbers)
MAX_EXPRESSION_CHARS = 2_000
MAX_EXPRESSION_DEPTH = 32
#: loop iterations plus list elements produced, by all the expressions of one config together
MAX_EXPRESSION_STEPS = 100_000
MAX_INTEGER_BITS = 64
MAX_ROUND_DIGITS = 30
_FUNCTIONS = ("int", "float", "round", "range")
_OPERATORS: Dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
}
Number = Union[int, float]


def _depth(tree: ast.AST) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


class _Evaluator:
    """Walks the AST of a list expression and computes its value, within the budgets above.

    Only numbers, + - * / // % and unary -/+, ``int``/``float``/``round``/``range``, lists, tuples
    and ``[... for NAME in ...]`` comprehensions (several ``for``, no ``if``) exist here; every
    other node is refused, so nothing outside this class can run.
    """

    def __init__(self) -> None:
        self.steps = 0

    def _step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > MAX_EXPRESSION_STEPS:
            raise ValueError(f"more than {MAX_EXPRESSION_STEPS} steps (loop iterations and list "
                             "elements, all the expressions of the config together)")

    def value(self, node: ast.AST, names: Dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                raise ValueError(f"constant {node.value!r:.40} is not a number")
            return self._number(node.value)
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(f"name {node.id!r} is not allowed")
            return names[node.id]
        if isinstance(node, (ast.List, ast.Tuple)):
            self._step(len(node.elts))
            values = [self.value(e, names) for e in node.elts]
            return values if isinstance(node, ast.List) else tuple(values)
        if isinstance(node, ast.ListComp):
            out: List[Any] = []
            self._comprehension(node, 0, dict(names), out)
            return out
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = self._numeric(node.left, names), self._numeric(node.right, names)
            try:
                return self._number(_OPERATORS[type(node.op)](left, right))
            except (ArithmeticError, ValueError) as e:
                raise ValueError(f"{type(e).__name__}: {e}") from None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self._numeric(node.operand, names)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.Call):
            return self._call(node, names)
        if isinstance(node, (ast.BinOp, ast.UnaryOp)):
            raise ValueError(f"the operator {type(node.op).__name__} is not allowed")
        raise ValueError(f"{type(node).__name__} is not allowed")

    def _numeric(self, node: ast.AST, names: Dict[str, Any]) -> Number:
        value = self.value(node, names)
        if type(value) not in (int, float):
            what = "lists" if isinstance(value, (list, tuple)) else type(value).__name__
            raise ValueError(f"arithmetic on {what} is not allowed")
        return value

    @staticmethod
    def _number(value: Number) -> Number:
        if isinstance(value, int) and value.bit_length() > MAX_INTEGER_BITS:
            raise ValueError(f"an integer of more than {MAX_INTEGER_BITS} bits")
        return value

    def _call(self, node: ast.Call, names: Dict[str, Any]) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
            raise ValueError("only int(), float(), round() and range() may be called")
        name = node.func.id
        if name == "range":
            r = self._range(node, names)
            self._step(len(r))
            return list(r)
        args = [self._numeric(a, names) for a in node.args]
        if name in ("int", "float") and len(args) != 1 or name == "round" and len(args) not in (1, 2):
            raise ValueError(f"{name}() takes {'one or two numbers' if name == 'round' else 'one number'}")
        if name == "round" and len(args) == 2 and (type(args[1]) is not int or abs(args[1]) > MAX_ROUND_DIGITS):
            raise ValueError(f"round()'s digits must be an integer in [-{MAX_ROUND_DIGITS}, {MAX_ROUND_DIGITS}]")
        function = {"int": int, "float": float, "round": round}[name]
        try:
            return self._number(function(*args))
        except (ArithmeticError, ValueError) as e:
            raise ValueError(f"{name}(): {e}") from None

    def _range(self, node: ast.Call, names: Dict[str, Any]) -> range:
        args = [self._numeric(a, names) for a in node.args]
        if not 1 <= len(args) <= 3 or any(type(a) is not int for a in args):
            raise ValueError("range() takes one to three integers")
        try:
            r = range(*args)
        except ValueError as e:  # a step of 0
            raise ValueError(f"range(): {e}") from None
        if len(r) > MAX_EXPRESSION_STEPS:  # would exceed the budget anyway: say so at once
            raise ValueError(f"range of {len(r)} numbers (at most {MAX_EXPRESSION_STEPS})")
        return r

    def _iterable(self, node: ast.AST, names: Dict[str, Any]) -> Iterable[Any]:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
                and not node.keywords:
            return self._range(node, names)  # iterated lazily: each iteration is a step
        value = self.value(node, names)
        if not isinstance(value, (list, tuple)):
            raise ValueError("a comprehension may only iterate over a list or range()")
        return value

    def _comprehension(self, node: ast.ListComp, level: int, names: Dict[str, Any], out: List[Any]) -> None:
        if level == len(node.generators):
            self._step()
            out.append(self.value(node.elt, names))
            return
        generator = node.generators[level]
        if not isinstance(generator.target, ast.Name) or generator.ifs or generator.is_async:
            raise ValueError("only 'for NAME in ...' comprehensions are allowed")
        if generator.target.id in _FUNCTIONS:
            raise ValueError(f"{generator.target.id!r} may not be a loop variable")
        for item in self._iterable(generator.iter, names):
            self._step()
            names[generator.target.id] = item
            self._comprehension(node, level + 1, names, out)


def evaluate_list_expression(text: str, evaluator: Optional[_Evaluator] = None) -> Any:
    """The value of a config expression such as ``[int(x * 0.1 * 512) for x in range(5, 21)]``.

    Only numbers, + - * / // %, ``int``/``float``/``round``/``range``, lists, tuples and plain list
    comprehensions are accepted, evaluated by walking the syntax tree (no ``eval``), within budgets:
    at most 2000 characters, 32 levels of nesting, 100000 steps (loop iterations plus list
    elements, all lists together), 64-bit integers, ``round`` to at most 30 digits. Anything else
    (attributes, other names or calls, strings, powers) or over budget raises one-line ``ValueError``.

    Args:
        evaluator: pass the same one for every expression of a config to share the step budget.
    """
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, MemoryError, RecursionError) as e:
        raise ValueError(f"not an expression ({getattr(e, 'msg', type(e).__name__)})") from None
    if _depth(tree) > MAX_EXPRESSION_DEPTH:
        raise ValueError(f"nested more than {MAX_EXPRESSION_DEPTH} levels deep")
    return (evaluator or _Evaluator()).value(tree.body, {})


def _list_expression_constructor(evaluator: _Evaluator) -> Callable[[yaml.SafeLoader, yaml.Node], Any]:
    """The YAML constructor of the eval tag: :func:`evaluate_list_expression` with ``evaluator``."""

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        mark = node.start_mark
        where = f"{mark.name}, line {mark.line + 1}" if mark.name else f"line {mark.line + 1}"
        if not isinstance(node, yaml.SequenceNode) or len(node.value) != 1 \
                or not isinstance(node.value[0], yaml.ScalarNode):
            raise ValueError(f"refused: python/object/apply:eval ({where}) takes one string")
        text = node.value[0].value
        try:
            return evaluate_list_expression(text, evaluator)
        except ValueError as e:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise ValueError(f"refused: the expression {shown!r} ({where}): {e}") from None

    return construct


@contextlib.contextmanager
def _list_expressions_allowed() -> Iterator[None]:
    """Within it, ``yaml.safe_load`` (which detectron2's config reader uses) accepts the official
    configs' list expressions through :func:`evaluate_list_expression`, all within one budget."""
    yaml.SafeLoader.add_constructor(_EVAL_TAG, _list_expression_constructor(_Evaluator()))
    try:
        yield
    finally:
        del yaml.SafeLoader.yaml_constructors[_EVAL_TAG]
