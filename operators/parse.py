"""Bytes in, :class:`~engage.events.Event` or :class:`DeadLetter` out.

The only place that knows the contract's JSON shape. It never raises on bad
input: whatever cannot be processed becomes a dead letter carrying the
original bytes and a machine-readable reason code, so the flow goes on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from engage.events import (CONSENT_CHANNELS, NUMBER, PROPERTY_SCHEMA, Event)

# Reason codes are a bounded set: they label the dead-letter metric.
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
UNKNOWN_TYPE = "unknown_type"
BAD_TIMESTAMP = "bad_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
NEGATIVE_AMOUNT = "negative_amount"
INVALID_VALUE = "invalid_value"

REASONS = (INVALID_JSON, NOT_AN_OBJECT, MISSING_FIELD, WRONG_TYPE, UNKNOWN_TYPE,
           BAD_TIMESTAMP, FUTURE_TIMESTAMP, NEGATIVE_AMOUNT, INVALID_VALUE)

#: Earliest event time we accept (2000-01-01): anything before is a broken clock.
MIN_TS_MS = 946_684_800_000
#: Largest amount, price or other number accepted: beyond it a sum could overflow to infinity,
#: which JSON cannot store.
MAX_AMOUNT = 1e12


class DeadLetter:
    """An input that was not processed, and why.

    >>> DeadLetter("invalid_json", "line 1", b"{", None).reason
    'invalid_json'
    """

    __slots__ = ("reason", "detail", "value", "key", "partition", "offset")

    def __init__(self, reason: str, detail: str, value: bytes | None,
                 key: bytes | None, partition: int = -1, offset: int = -1) -> None:
        self.reason = reason
        self.detail = detail
        self.value = value
        self.key = key
        self.partition = partition
        self.offset = offset

    def __repr__(self) -> str:
        return f"DeadLetter({self.reason!r}, {self.detail!r})"


class Rejected(Exception):
    """Raised inside validation; turned into a :class:`DeadLetter`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_ts(value: Any) -> int:
    """Event time in epoch milliseconds from ISO 8601 (with offset) or epoch ms.

    >>> parse_ts("2026-11-22T14:35:27.123Z")
    1795358127123
    >>> parse_ts(1795358127123)
    1795358127123
    """
    if type(value) is int:
        return value
    if type(value) is str:
        try:
            # Python 3.10 does not read a trailing "Z"; 3.11 does.
            dt = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            raise Rejected(BAD_TIMESTAMP, f"ts {value!r} is not ISO 8601") from None
        if dt.tzinfo is None:
            raise Rejected(BAD_TIMESTAMP, f"ts {value!r} has no UTC offset")
        return int(dt.timestamp() * 1000)
    raise Rejected(BAD_TIMESTAMP,
                   f"ts must be an ISO 8601 string or integer epoch ms, got {type(value).__name__}")


def _type_name(types: tuple[type, ...]) -> str:
    return {"int": "number", "str": "string", "bool": "boolean", "list": "array"}.get(
        types[0].__name__, types[0].__name__)


def _check_properties(etype: str, props: dict[str, Any]) -> None:
    for name, (types, required) in PROPERTY_SCHEMA[etype].items():
        value = props.get(name)
        if value is None:
            if required:
                raise Rejected(MISSING_FIELD, f"properties.{name} is required for {etype}")
            continue
        # Exact type checks: a JSON true (a Python bool, a kind of int) is
        # never a number here. Equality, not identity, on the schema's type
        # tuples: compiled code may copy them.
        if type(value) not in types:
            raise Rejected(WRONG_TYPE, f"properties.{name} must be a {_type_name(types)}")
        if types == NUMBER:
            if value < 0:
                reason = NEGATIVE_AMOUNT if name in ("amount", "price") else INVALID_VALUE
                raise Rejected(reason, f"properties.{name} must not be negative")
            if value > MAX_AMOUNT:
                raise Rejected(INVALID_VALUE, f"properties.{name} {value!r} is absurdly large")
    quantity = props.get("quantity")
    if quantity is not None:
        # A quantity is a count: 2 or 2.0, never 1.5 or 0.
        if quantity != int(quantity) or quantity < 1:
            raise Rejected(INVALID_VALUE, "properties.quantity must be a whole number of at least 1")
        props["quantity"] = int(quantity)
    _check_values(etype, props)


def _check_values(etype: str, props: dict[str, Any]) -> None:
    if etype == "consent_update" and props["channel"] not in CONSENT_CHANNELS:
        raise Rejected(INVALID_VALUE, f"properties.channel {props['channel']!r} is not one of "
                       f"{', '.join(sorted(CONSENT_CHANNELS))}")
    if etype == "service_ticket" and "csat" in props and props["csat"] is not None:
        if not 1 <= props["csat"] <= 5:
            raise Rejected(INVALID_VALUE, "properties.csat must be between 1 and 5")
    if etype in ("register", "profile_update"):
        birthday = props.get("birthday")
        if birthday is not None and not _valid_birthday(birthday):
            raise Rejected(INVALID_VALUE,
                           f"properties.birthday {birthday!r} is not MM-DD or YYYY-MM-DD")
        tz = props.get("timezone")
        if tz is not None and not _valid_timezone(tz):
            raise Rejected(INVALID_VALUE, f"properties.timezone {tz!r} is not an IANA time zone")
    if etype.startswith("order_") and "items" in props and props["items"] is not None:
        for i, item in enumerate(props["items"]):
            if type(item) is not dict:
                raise Rejected(WRONG_TYPE, f"properties.items[{i}] must be an object")
            sku = item.get("sku")
            if sku is not None and type(sku) is not str:
                raise Rejected(WRONG_TYPE, f"properties.items[{i}].sku must be a string")
            price = item.get("price")
            if price is not None and type(price) not in NUMBER:
                raise Rejected(WRONG_TYPE, f"properties.items[{i}].price must be a number")
            if price is not None and price < 0:
                raise Rejected(NEGATIVE_AMOUNT, f"properties.items[{i}].price must not be negative")


def _valid_birthday(value: str) -> bool:
    for fmt in ("%m-%d", "%Y-%m-%d"):
        try:
            # Leap day needs a leap year to parse with "%m-%d".
            datetime.strptime(("2000-" + value) if fmt == "%m-%d" else value, "%Y-%m-%d")
            return True
        except ValueError:
            continue
    return False


_TZ_CACHE: dict[str, bool] = {}


def _valid_timezone(name: str) -> bool:
    ok = _TZ_CACHE.get(name)
    if ok is None:
        try:
            ZoneInfo(name)
            ok = True
        except (ValueError, KeyError, OSError):
            ok = False
        if len(_TZ_CACHE) < 10_000:
            _TZ_CACHE[name] = ok
    return ok


def _optional_id(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if type(value) is not str:
        raise Rejected(WRONG_TYPE, f"{name} must be a string or null")
    return value or None


def validate(doc: Any, now_ms: int, max_future_ms: int) -> Event:
    """Check a decoded JSON document against contract v1 and build an :class:`Event`.

    Raises :class:`Rejected` with a reason code and a human detail.

    >>> validate({"event_id": "e1", "type": "search", "ts": 1795358127123,
    ...           "user_id": "c-1", "properties": {"query": "oak table"}},
    ...          now_ms=1795358127123, max_future_ms=0).type
    'search'
    """
    if type(doc) is not dict:
        raise Rejected(NOT_AN_OBJECT, f"event must be a JSON object, got {type(doc).__name__}")
    event_id = doc.get("event_id")
    if event_id is None or event_id == "":
        raise Rejected(MISSING_FIELD, "event_id is required")
    if type(event_id) is not str:
        raise Rejected(WRONG_TYPE, "event_id must be a string")
    etype = doc.get("type")
    if etype is None:
        raise Rejected(MISSING_FIELD, "type is required")
    if type(etype) is not str:
        raise Rejected(WRONG_TYPE, "type must be a string")
    if etype not in PROPERTY_SCHEMA:
        raise Rejected(UNKNOWN_TYPE, f"unknown event type {etype!r}")
    if "ts" not in doc or doc["ts"] is None:
        raise Rejected(MISSING_FIELD, "ts is required")
    ts = parse_ts(doc["ts"])
    if ts < MIN_TS_MS:
        raise Rejected(BAD_TIMESTAMP, f"ts {doc['ts']!r} is before 2000-01-01")
    if ts > now_ms + max_future_ms:
        raise Rejected(FUTURE_TIMESTAMP,
                       f"ts {doc['ts']!r} is more than {max_future_ms} ms in the future")
    user_id = _optional_id(doc, "user_id")
    anonymous_id = _optional_id(doc, "anonymous_id")
    if user_id is None and anonymous_id is None:
        raise Rejected(MISSING_FIELD, "user_id or anonymous_id is required")
    channel = doc.get("channel")
    if channel is not None and type(channel) is not str:
        raise Rejected(WRONG_TYPE, "channel must be a string")
    props = doc.get("properties")
    if props is None:
        props = {}
    elif type(props) is not dict:
        raise Rejected(WRONG_TYPE, "properties must be an object")
    _check_properties(etype, props)
    return Event(event_id, etype, ts, user_id, anonymous_id, channel, props)


def parse(value: bytes | None, key: bytes | None, partition: int, offset: int,
          now_ms: int, max_future_ms: int) -> Event | DeadLetter:
    """Decode and validate one Kafka record; never raises.

    >>> parse(b"not json", None, 0, 7, 0, 0).reason
    'invalid_json'
    """
    try:
        doc = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError as exc:
        return DeadLetter(INVALID_JSON, str(exc), value, key, partition, offset)
    try:
        event = validate(doc, now_ms, max_future_ms)
    except Rejected as rej:
        return DeadLetter(rej.reason, rej.detail, value, key, partition, offset)
    event.partition = partition
    event.offset = offset
    return event
