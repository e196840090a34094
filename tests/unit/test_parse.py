"""Ingestion per contract v1: every valid type is accepted, every defect has its reason."""

from __future__ import annotations

import orjson
import pytest

from engage.events import EVENT_TYPES, Event
from engage.operators import parse as p

NOW = 1_795_000_000_000
SKEW = 300_000

VALID_PROPS = {
    "page_view": {"url": "/", "dwell_ms": 1200},
    "content_engage": {"content_id": "guide-1", "content_type": "guide"},
    "product_view": {"sku": "S1", "category": "sofa", "price": 10.0, "style": "boho"},
    "favorite": {"sku": "S1", "category": "sofa"},
    "share": {"sku": "S1", "category": "sofa"},
    "search": {"query": "oak table"},
    "add_to_cart": {"sku": "S1", "category": "sofa", "price": 10.0, "quantity": 2},
    "remove_from_cart": {"sku": "S1", "category": "sofa", "price": 10.0},
    "login": {},
    "register": {"birthday": "02-29", "timezone": "Europe/Berlin", "region": "BE"},
    "profile_update": {"birthday": "1990-05-17", "preferred_channel": "email"},
    "consent_update": {"channel": "sms", "granted": False},
    "order_placed": {"order_id": "o1", "amount": 99.5, "items": [{"sku": "S1", "price": 99.5}]},
    "order_paid": {"order_id": "o1", "amount": 99.5, "currency": "EUR"},
    "order_cancelled": {"order_id": "o1", "amount": 99.5},
    "order_refunded": {"order_id": "o1", "amount": 20, "reason": "size"},
    "service_ticket": {"ticket_id": "t1", "topic": "delivery", "csat": 4},
}


def event(**over: object) -> dict:
    base = {"event_id": "e-1", "type": "search", "ts": NOW - 1000, "user_id": "c-1",
            "anonymous_id": None, "properties": {"query": "sofa"}}
    base.update(over)
    return base


def run(value: bytes | None) -> Event | p.DeadLetter:
    return p.parse(value, b"k", 3, 42, NOW, SKEW)


def test_every_contract_type_is_accepted_with_its_properties() -> None:
    assert set(VALID_PROPS) == set(EVENT_TYPES)
    for etype, props in VALID_PROPS.items():
        out = run(orjson.dumps(event(type=etype, properties=props)))
        assert isinstance(out, Event), (etype, out)
        assert out.type == etype and out.partition == 3 and out.offset == 42


def test_iso_and_epoch_timestamps_mean_the_same_instant() -> None:
    iso = run(orjson.dumps(event(ts="2026-11-17T10:13:20.000+00:00")))
    z = run(orjson.dumps(event(ts="2026-11-17T10:13:20Z")))
    ms = run(orjson.dumps(event(ts=1_794_910_400_000)))
    offset = run(orjson.dumps(event(ts="2026-11-17T11:13:20+01:00")))
    assert isinstance(iso, Event) and isinstance(ms, Event)
    assert iso.ts == z.ts == ms.ts == offset.ts == 1_794_910_400_000  # type: ignore[union-attr]


def test_a_whole_quantity_written_as_a_float_is_accepted_as_a_count() -> None:
    out = run(orjson.dumps(event(type="add_to_cart", properties={
        "sku": "S", "category": "c", "price": 1.0, "quantity": 2.0})))
    assert isinstance(out, Event) and out.props["quantity"] == 2 and type(out.props["quantity"]) is int


def test_unknown_properties_are_kept() -> None:
    out = run(orjson.dumps(event(properties={"query": "x", "utm_source": "mail"})))
    assert isinstance(out, Event) and out.props["utm_source"] == "mail"


def test_anonymous_only_event_is_accepted() -> None:
    out = run(orjson.dumps(event(user_id=None, anonymous_id="d-1")))
    assert isinstance(out, Event) and out.customer_key == "~d-1"


@pytest.mark.parametrize("value, reason", [
    (b"{not json", p.INVALID_JSON),
    (b"", p.INVALID_JSON),
    (None, p.NOT_AN_OBJECT),
    (b"[1, 2]", p.NOT_AN_OBJECT),
    (b'"just a string"', p.NOT_AN_OBJECT),
    (orjson.dumps(event(event_id=None)), p.MISSING_FIELD),
    (orjson.dumps(event(event_id="")), p.MISSING_FIELD),
    (orjson.dumps(event(event_id=7)), p.WRONG_TYPE),
    (orjson.dumps({k: v for k, v in event().items() if k != "type"}), p.MISSING_FIELD),
    (orjson.dumps(event(type=5)), p.WRONG_TYPE),
    (orjson.dumps(event(type="teleport")), p.UNKNOWN_TYPE),
    (orjson.dumps({k: v for k, v in event().items() if k != "ts"}), p.MISSING_FIELD),
    (orjson.dumps(event(ts="yesterday")), p.BAD_TIMESTAMP),
    (orjson.dumps(event(ts="2026-11-17T10:13:20")), p.BAD_TIMESTAMP),  # no offset
    (orjson.dumps(event(ts=12.5)), p.BAD_TIMESTAMP),
    (orjson.dumps(event(ts=5)), p.BAD_TIMESTAMP),  # 1970: a broken clock
    (orjson.dumps(event(ts=NOW + SKEW + 1)), p.FUTURE_TIMESTAMP),
    (orjson.dumps(event(user_id=None, anonymous_id=None)), p.MISSING_FIELD),
    (orjson.dumps(event(user_id=123)), p.WRONG_TYPE),
    (orjson.dumps(event(properties=[1])), p.WRONG_TYPE),
    (orjson.dumps(event(channel=3)), p.WRONG_TYPE),
    (orjson.dumps(event(properties={})), p.MISSING_FIELD),  # search needs query
    (orjson.dumps(event(type="add_to_cart", properties={"sku": "S", "category": "c"})), p.MISSING_FIELD),
    (orjson.dumps(event(type="add_to_cart", properties={"sku": "S", "category": "c", "price": "9"})),
     p.WRONG_TYPE),
    (orjson.dumps(event(type="order_paid", properties={"order_id": "o", "amount": -1})),
     p.NEGATIVE_AMOUNT),
    (orjson.dumps(event(type="order_paid", properties={"order_id": "o", "amount": True})),
     p.WRONG_TYPE),
    (orjson.dumps(event(type="order_paid", properties={"order_id": "o", "amount": 5,
                                                        "items": [{"price": -2}]})), p.NEGATIVE_AMOUNT),
    (orjson.dumps(event(type="order_paid", properties={"order_id": "o", "amount": 5, "items": [3]})),
     p.WRONG_TYPE),
    (orjson.dumps(event(type="add_to_cart", properties={"sku": "S", "category": "c", "price": -1})),
     p.NEGATIVE_AMOUNT),
    (orjson.dumps(event(type="consent_update", properties={"channel": "fax", "granted": True})),
     p.INVALID_VALUE),
    (orjson.dumps(event(type="consent_update", properties={"channel": "sms", "granted": "yes"})),
     p.WRONG_TYPE),
    (orjson.dumps(event(type="service_ticket", properties={"ticket_id": "t", "csat": 9})),
     p.INVALID_VALUE),
    (orjson.dumps(event(type="profile_update", properties={"birthday": "31-31"})), p.INVALID_VALUE),
    (orjson.dumps(event(type="profile_update", properties={"timezone": "Mars/Olympus"})),
     p.INVALID_VALUE),
    (orjson.dumps(event(type="order_paid", properties={"order_id": "o", "amount": 1e308})),
     p.INVALID_VALUE),
    (orjson.dumps(event(type="add_to_cart", properties={"sku": "S", "category": "c", "price": 1,
                                                         "quantity": 1.5})), p.INVALID_VALUE),
    (orjson.dumps(event(type="add_to_cart", properties={"sku": "S", "category": "c", "price": 1,
                                                         "quantity": 0})), p.INVALID_VALUE),
    (orjson.dumps(event(type="order_paid", properties={"order_id": "o", "amount": 5,
                                                        "items": [{"sku": ["x"]}]})), p.WRONG_TYPE),
])
def test_defects_become_dead_letters_with_reason_and_original_bytes(value: bytes | None,
                                                                     reason: str) -> None:
    out = run(value)
    assert isinstance(out, p.DeadLetter), out
    assert out.reason == reason, out.detail
    assert out.value == value and out.key == b"k"
    assert (out.partition, out.offset) == (3, 42)
    assert out.detail  # a human-readable why


def test_every_reason_code_is_reachable() -> None:
    # The parametrised cases above cover the whole bounded set of labels.
    assert set(p.REASONS) == {p.INVALID_JSON, p.NOT_AN_OBJECT, p.MISSING_FIELD, p.WRONG_TYPE,
                              p.UNKNOWN_TYPE, p.BAD_TIMESTAMP, p.FUTURE_TIMESTAMP,
                              p.NEGATIVE_AMOUNT, p.INVALID_VALUE}
