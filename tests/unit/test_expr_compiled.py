"""The compiled fast paths of conditions answer exactly as the plain tree-walk would.

:mod:`engage.rules.expr` specialises common shapes (a field against a number,
``and``/``or`` of comparisons, calls with literal arguments, literal lists);
replay determinism needs every answer, and every error, to stay what the
general path gives. The reference below walks the tree with the original
semantics; generated conditions and values must get the same result (value
and type) or the same error (type and message) from both.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage.rules.expr import (BUILTINS, EvalError, Node, _arith, _contains, _number, _ordered,
                               _truth, compile_expr, Condition, Names)
from engage.rules.vocabulary import FUNCTIONS
from engage.rules.expr import Lookup


def _reference(node: Node, get: Lookup, names: Names) -> Any:
    """The condition language evaluated by walking the tree, without specialisation."""
    op = node.op
    if op == "lit":
        return node.value
    if op == "name":
        return get(node.value)
    if op == "list":
        return [_reference(a, get, names) for a in node.args]
    if op == "call":
        f = names.function(node.value)
        assert f is not None
        args = [_reference(a, get, names) for a in node.args]
        return f.impl(get, *args) if f.needs_context else f.impl(*args)
    if op == "not":
        return not _truth(_reference(node.args[0], get, names))
    if op == "neg":
        return -_number(_reference(node.args[0], get, names))
    left = node.args[0]
    right = node.args[1]
    if op == "and":
        return _truth(_reference(left, get, names)) and _truth(_reference(right, get, names))
    if op == "or":
        return _truth(_reference(left, get, names)) or _truth(_reference(right, get, names))
    a, b = _reference(left, get, names), _reference(right, get, names)
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op == "in":
        return _contains(a, b)
    if op == "not in":
        return not _contains(a, b)
    if op in ("<", "<=", ">", ">="):
        return _ordered(op)(a, b)
    return _arith(op)(a, b)


def _outcome(fn: Any) -> tuple[str, str]:
    try:
        value = fn()
    except (EvalError, ValueError, TypeError, KeyError) as exc:
        return ("error " + type(exc).__name__, str(exc))
    return (type(value).__name__, repr(value))


FIELDS = ["orders", "cart_value", "churn_risk", "tags", "region"]
SCALARS = (st.none() | st.booleans() | st.integers(-3, 12) | st.sampled_from([0.5, 0.7, 10.0, -0.0])
           | st.floats(allow_nan=True) | st.sampled_from(["", "a", "email", "sofa"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3), max_leaves=5)
LITERALS = st.sampled_from(["0", "3", "10", "0.7", "1e3", "true", "false", "null", '"email"',
                            '""', '["a", "sofa"]', "[1, 2.5]", "[]"])


def _conditions() -> Any:
    atom = st.sampled_from(FIELDS) | LITERALS | st.sampled_from([
        'count("product_view", "7d")', 'count("product_view", "7d", "sofa")',
        'count(region, "7d")', 'has_tag("vip")', 'consented("email")', "len(tags)",
        "max(orders, 2)", "-orders"])
    cmp_ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not in", "+", "*", "/"])

    def extend(inner: Any) -> Any:
        return (st.tuples(inner, cmp_ops, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
                | st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
                    lambda t: f"({t[0]} {t[1]} {t[2]})")
                | inner.map(lambda x: f"(not {x})"))
    return st.recursive(atom, extend, max_leaves=6)


NAMES = Names(frozenset(FIELDS) | {f"count:{c}:{w}" for c in ("product_view", "product_view|sofa")
                                    for w in ("7d",)},
              open_prefixes=("",), functions=FUNCTIONS)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_conditions(),
       values=st.dictionaries(st.sampled_from(FIELDS + ["count:product_view:7d",
                                                         "count:product_view|sofa:7d",
                                                         "consented:email"]), VALUES))
def test_compiled_conditions_answer_as_the_tree_walk(text: str, values: dict[str, Any]) -> None:
    cond = Condition.of(text, NAMES)
    get = values.get
    expected = _outcome(lambda: _truth(_reference(cond.tree, get, NAMES)))
    assert _outcome(lambda: cond.evaluate(get)) == expected, text
    # The raw closure too (a sub-expression's value, not only its truth).
    assert _outcome(lambda: cond.fn(get)) == _outcome(lambda: _reference(cond.tree, get, NAMES)), \
        text


def test_a_field_against_a_number_keeps_the_checked_semantics() -> None:
    cond = compile_expr("x >= 3")
    assert cond.evaluate({"x": 3}.get) is True
    assert cond.evaluate({"x": 2.5}.get) is False
    for bad in (None, True, "3", [3]):
        try:
            cond.evaluate({"x": bad}.get)
        except EvalError:
            continue
        raise AssertionError(f"{bad!r} >= 3 answered")
    assert compile_expr('"b" > "a"').evaluate({}.get) is True
    assert compile_expr("3 < x").evaluate({"x": 4}.get) is True


def test_builtins_are_untouched() -> None:
    assert set(BUILTINS) == {"len", "lower", "min", "max", "abs"}
