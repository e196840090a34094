"""Fuzzing the two places that read untrusted text: event ingestion and the condition language.

Bounded in time (a few hundred examples each, no deadline): every input either
parses or is refused the documented way, never with an exception of another kind.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engage.events import PROPERTY_SCHEMA, Event
from engage.operators.parse import REASONS, DeadLetter, parse
from engage.rules.expr import MAX_LENGTH, EvalError, ExprError, compile_expr

NOW_MS = 1_790_000_000_000
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: JSON values orjson can write (no NaN, integers within 64 bits).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)

_PROPERTY_NAMES = sorted({name for schema in PROPERTY_SCHEMA.values() for name in schema}
                         | {"sku", "category", "price", "quantity", "amount", "order_id", "items",
                            "birthday", "timezone", "channel", "granted", "csat"})


@st.composite
def event_like(draw: Any) -> dict[str, Any]:
    """A contract-shaped object whose every field may be right, wrong or missing."""
    doc: dict[str, Any] = {}
    field_values = {
        "event_id": st.text(max_size=10) | json_values,
        "type": st.sampled_from(sorted(PROPERTY_SCHEMA)) | json_values,
        "ts": st.integers(NOW_MS - 10**12, NOW_MS + 10**12)
        | st.sampled_from(["2026-09-21T12:01:00Z", "2026-13-40T99:00:00Z", "yesterday", ""])
        | json_values,
        "user_id": st.none() | st.text(max_size=6) | json_values,
        "anonymous_id": st.none() | st.text(max_size=6) | json_values,
        "channel": st.sampled_from(["web", "app"]) | json_values,
        "properties": st.dictionaries(st.sampled_from(_PROPERTY_NAMES), json_values | st.floats(),
                                      max_size=6) | json_values,
    }
    for name, strategy in field_values.items():
        if draw(st.booleans()) or name in ("event_id", "type", "ts"):
            doc[name] = draw(strategy)
    return doc


def _check(out: Event | DeadLetter) -> None:
    if isinstance(out, DeadLetter):
        assert out.reason in REASONS, out
        assert out.detail
    else:
        assert isinstance(out, Event)
        assert out.user_id or out.anonymous_id
        # What is accepted can be stored: Redis documents are JSON.
        orjson.dumps(out.props)


@FUZZ
@given(st.binary(max_size=300))
@example(b"")
@example(b"\xff\xfe")
@example(b"[" * 1000)
def test_arbitrary_bytes_become_an_event_or_a_dead_letter_with_a_known_reason(raw: bytes) -> None:
    _check(parse(raw, None, 0, 0, NOW_MS, 300_000))


@FUZZ
@given(json_values)
def test_arbitrary_json_becomes_an_event_or_a_dead_letter_with_a_known_reason(doc: Any) -> None:
    _check(parse(orjson.dumps(doc), b"k", 1, 2, NOW_MS, 300_000))


@FUZZ
@given(event_like())
@example({"event_id": "e", "type": "order_paid", "ts": NOW_MS, "user_id": "c",
          "properties": {"order_id": "o", "amount": 1e308}})
@example({"event_id": "e", "type": "add_to_cart", "ts": NOW_MS, "user_id": "c",
          "properties": {"sku": "s", "category": "x", "price": 1, "quantity": 2**64 - 1}})
def test_contract_shaped_objects_become_an_event_or_a_dead_letter(doc: dict[str, Any]) -> None:
    try:
        raw = orjson.dumps(doc)
    except TypeError:  # a float orjson refuses (inf, nan) cannot arrive as JSON
        return
    out = parse(raw, None, 0, 0, NOW_MS, 300_000)
    _check(out)
    if isinstance(out, Event):
        for name in ("amount", "price"):
            value = out.props.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert math.isfinite(value) and value >= 0


_TOKENS = st.sampled_from([
    "and", "or", "not", "in", "true", "false", "null", "(", ")", "[", "]", ",", ".", "==", "!=",
    "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "orders", "tags", "spend_30d", "event",
    "properties", "count", "len", "lower", "min", "max", "abs", "consented", "has_tag", "0",
    "1e308", "3.5", "-", '"vip"', "'x'", '"\\"', "9" * 30, " ",
])


def _evaluate(text: str) -> None:
    try:
        cond = compile_expr(text)
    except ExprError as exc:
        assert exc.column >= 1
        return
    values: dict[str, Any] = {"orders": 3, "tags": ["vip"], "spend_30d": 1e308, "event": None,
                              "properties": {"x": [1, "a"]}}
    try:
        assert cond.evaluate(values.get) in (True, False)
    except EvalError:
        pass


@FUZZ
@given(st.text(max_size=200))
@example("(" * 5000)
@example("not " * 5000 + "true")
@example("x" * (MAX_LENGTH + 1))
def test_arbitrary_text_is_a_condition_or_an_error_with_a_column(text: str) -> None:
    _evaluate(text)


@FUZZ
@given(st.lists(_TOKENS, max_size=40).map(" ".join))
def test_token_soup_is_a_condition_or_an_error_with_a_column(text: str) -> None:
    _evaluate(text)
