"""The condition language: what it means, where its errors point, and that it cannot be abused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engage.rules.expr import MAX_NODES, Condition, EvalError, ExprError, Names, compile_expr
from engage.rules.vocabulary import names_for
from engage.state.customer import StateConfig

CUSTOMER = {"orders": 0, "cart_items": 2, "cart_value": 149.5, "tags": ["vip", "sofa_lover"],
            "stage": "active", "segment": None, "event.properties.category": "sofa",
            "region": "north"}


def holds(text: str, values: dict[str, Any] = CUSTOMER) -> bool:
    return compile_expr(text).evaluate(values.get)


@pytest.mark.parametrize("text, expected", [
    ("cart_items > 0 and cart_value >= 100", True),
    ("orders >= 1 or cart_items == 2", True),
    ("not orders", True),
    ("not orders >= 1", True),                       # not binds looser than comparisons
    ("1 + 2 * 3 == 7", True),                        # * before +
    ("(1 + 2) * 3 == 9", True),
    ("-cart_items < 0", True),
    ("10 % 4 == 2 and 7 / 2 == 3.5", True),
    ('"vip" in tags and "gold" not in tags', True),
    ('event.properties.category in ["sofa", "bed"]', True),
    ('stage == "active" and segment == null', True),
    ("segment != null", False),
    ('lower("SOFA") == event.properties.category', True),
    ("len(tags) == 2 and max(orders, cart_items) == 2 and abs(-3) == 3", True),
    ('"so" in event.properties.category', True),
    ("true and not false", True),
    ("1e3 == 1000", True),
    ("'it\\'s' == \"it's\"", True),
])
def test_conditions_mean_what_they_say(text: str, expected: bool) -> None:
    assert holds(text) is expected


@pytest.mark.parametrize("text", [
    "segment > 3",            # a missing value is not smaller or larger than anything
    '"a" < 3',
    "cart_items / 0 > 1",
    '"x" + 1 == 2',
    "tags > 1",
])
def test_conditions_that_cannot_be_decided_say_so(text: str) -> None:
    with pytest.raises(EvalError):
        holds(text)


@pytest.mark.parametrize("text, column, message", [
    ("cart_items >", 13, "expected a value, found the end of the condition"),
    ("cart_items > 0 and", 19, "expected a value, found the end of the condition"),
    ("(orders > 1", 12, "expected ')', found the end"),
    ("orders = 1", 8, "unexpected character '='"),
    ("orders > 1 1", 12, "unexpected '1' after a complete condition"),
    ('region == "north', 11, "unterminated string"),
    ("", 1, "empty condition"),
    ("orders.", 8, "expected a field name after '.'"),
    ("a; import os", 2, "unexpected character ';'"),
])
def test_syntax_errors_point_at_the_column(text: str, column: int, message: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_expr(text)
    assert (info.value.column, info.value.message) == (column, message)


def test_names_and_functions_are_checked_against_the_vocabulary() -> None:
    names = names_for(StateConfig.default(), ("add_to_cart",))
    assert Condition.of("product_view_7d >= 10 and cart_items > 0", names)
    assert Condition.of('count("product_view", "7d", "sofa") > 2 and consented("sms")', names)
    with pytest.raises(ExprError, match=r"unknown field 'product_veiw_7d'; did you mean 'product_view_7d'\?"):
        Condition.of("product_veiw_7d > 1", names)
    with pytest.raises(ExprError, match="unknown field 'event.properties.query'"):
        Condition.of('event.properties.query == "x"', names)   # a search property, not a cart one
    with pytest.raises(ExprError, match=r"count\(\) takes 2 to 3 arguments, got 1"):
        Condition.of('count("search")', names)
    with pytest.raises(ExprError, match="unknown function 'eval'"):
        Condition.of('eval("1")', names)


def test_no_way_into_python_objects() -> None:
    # A dotted name is one key for the lookup, never attribute access, and
    # nothing but the lookup is ever called with it.
    asked: list[str] = []

    def lookup(name: str) -> Any:
        asked.append(name)
        return None

    compile_expr("x.__class__.__bases__ == null and y.__globals__ == null").evaluate(lookup)
    assert asked == ["x.__class__.__bases__", "y.__globals__"]
    names = names_for(StateConfig.default())
    with pytest.raises(ExprError, match="unknown field"):
        Condition.of("orders.__class__ == null", names)
    with pytest.raises(ExprError):
        compile_expr("orders[0] == 1")          # no indexing
    with pytest.raises(ExprError):
        compile_expr("(lambda: 1)() == 1")


def test_cost_is_bounded_by_the_size_of_the_tree() -> None:
    big = " + ".join(["1"] * (MAX_NODES // 2 + 1)) + " > 0"
    with pytest.raises(ExprError, match="too complex"):
        compile_expr(big)
    with pytest.raises(ExprError, match="longer than"):
        compile_expr("orders == 1 or " * 200 + "true")
    # Nesting is bounded too, before any recursion gets deep.
    for deep in ("(" * 600 + "1" + ")" * 600, "-" * 1500 + "1 > 0", "not " * 300 + "true",
                 "[" * 100 + "]" * 100, "len(" * 50 + "1" + ")" * 50):
        with pytest.raises(ExprError, match="nested too deeply"):
            compile_expr(deep)


# Text built from the language's own pieces reaches the parser's corners far
# more often than random characters would.
PIECES = st.sampled_from(["((((((((((", "not not not", "orders", "tags", "cart_value", "event.properties.category", "1", "2.5",
                          '"sofa"', "'x'", "null", "true", "and", "or", "not", "in", "==", "!=",
                          "<", ">=", "+", "-", "*", "/", "%", "(", ")", "[", "]", ",", ".", "len",
                          "max", "lower", "=", ";", "\\", '"', "__class__", " "])
VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False)
                      | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@settings(max_examples=600, deadline=None)
@given(pieces=st.lists(PIECES, max_size=25), raw=st.text(max_size=40),
       values=st.dictionaries(st.sampled_from(["orders", "tags", "cart_value",
                                               "event.properties.category"]), VALUES))
def test_any_text_either_compiles_or_is_refused_with_a_column_and_never_crashes(
        pieces: list[str], raw: str, values: dict[str, Any]) -> None:
    for text in (" ".join(pieces), raw):
        try:
            cond = compile_expr(text)
        except ExprError as exc:
            assert 1 <= exc.column <= max(1, len(text) + 1)
            continue
        try:
            assert cond.evaluate(values.get) in (True, False)
        except EvalError:
            pass
        except RecursionError:  # pragma: no cover - MAX_NODES keeps trees shallow
            pytest.fail(f"recursion on {text!r}")


def test_names_without_a_vocabulary_are_free_but_functions_are_not() -> None:
    assert Condition.of("anything > 1", Names(frozenset({"anything"}))).names() == ["anything"]
