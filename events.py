"""The engine's view of one storefront event, after validation.

Every later step (identity, state, triggers) works on :class:`Event`, never on
raw JSON, so the contract's field names and formats are checked exactly once,
in :mod:`engage.operators.parse`.
"""

from __future__ import annotations

from typing import Any

#: Event types of contract v1, with the properties each requires and the
#: Python types each known property must have. Unknown properties are kept.
NUMBER = (int, float)
STRING = (str,)
BOOL = (bool,)
LIST = (list,)

PROPERTY_SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    # property -> (allowed types, required)
    "page_view": {"url": (STRING, False), "content_id": (STRING, False),
                  "content_type": (STRING, False), "dwell_ms": (NUMBER, False)},
    "content_engage": {"url": (STRING, False), "content_id": (STRING, False),
                       "content_type": (STRING, False), "dwell_ms": (NUMBER, False)},
    "product_view": {"sku": (STRING, True), "category": (STRING, True),
                     "price": (NUMBER, False), "style": (STRING, False)},
    "favorite": {"sku": (STRING, True), "category": (STRING, True),
                 "price": (NUMBER, False), "style": (STRING, False)},
    "share": {"sku": (STRING, True), "category": (STRING, True),
              "price": (NUMBER, False), "style": (STRING, False)},
    "search": {"query": (STRING, True)},
    "add_to_cart": {"sku": (STRING, True), "category": (STRING, True),
                    "price": (NUMBER, True), "quantity": (NUMBER, False)},
    "remove_from_cart": {"sku": (STRING, True), "category": (STRING, True),
                         "price": (NUMBER, True), "quantity": (NUMBER, False)},
    "login": {},
    "register": {"birthday": (STRING, False), "timezone": (STRING, False),
                 "region": (STRING, False), "preferred_channel": (STRING, False)},
    "profile_update": {"birthday": (STRING, False), "timezone": (STRING, False),
                       "region": (STRING, False), "preferred_channel": (STRING, False)},
    "consent_update": {"channel": (STRING, True), "granted": (BOOL, True)},
    "order_placed": {"order_id": (STRING, True), "amount": (NUMBER, True),
                     "currency": (STRING, False), "items": (LIST, False)},
    "order_paid": {"order_id": (STRING, True), "amount": (NUMBER, True),
                   "currency": (STRING, False), "items": (LIST, False)},
    "order_cancelled": {"order_id": (STRING, True), "amount": (NUMBER, True),
                        "currency": (STRING, False), "items": (LIST, False)},
    "order_refunded": {"order_id": (STRING, True), "amount": (NUMBER, True),
                       "reason": (STRING, False)},
    "service_ticket": {"ticket_id": (STRING, True), "topic": (STRING, False),
                       "csat": (NUMBER, False)},
}

EVENT_TYPES = frozenset(PROPERTY_SCHEMA)

#: Types that carry a product category; their counts are also kept per category.
CATEGORISED_TYPES = frozenset(
    {"product_view", "favorite", "share", "add_to_cart", "remove_from_cart"}
)

#: An order event that ends a shopping journey (and so cancels cart reminders).
ORDER_TYPES = frozenset({"order_placed", "order_paid"})

CONSENT_CHANNELS = frozenset({"email", "sms", "push", "wechat", "all"})


class Event:
    """One validated storefront event.

    ``ts`` is event time in epoch milliseconds. ``partition`` and ``offset``
    say where the event was read from, so every action can be traced back to
    its input. ``late`` is set by the event clock: a late event is counted in
    lifetime totals but not in sliding windows.

    >>> e = Event("e-1", "search", 1_700_000_000_000, "c-1", None, "web", {"query": "sofa"})
    >>> e.customer_key
    'c-1'
    """

    __slots__ = ("event_id", "type", "ts", "user_id", "anonymous_id", "channel",
                 "props", "partition", "offset", "late")

    def __init__(self, event_id: str, type: str, ts: int, user_id: str | None,
                 anonymous_id: str | None, channel: str | None,
                 props: dict[str, Any], partition: int = 0, offset: int = -1,
                 late: bool = False) -> None:
        self.event_id = event_id
        self.type = type
        self.ts = ts
        self.user_id = user_id
        self.anonymous_id = anonymous_id
        self.channel = channel
        self.props = props
        self.partition = partition
        self.offset = offset
        self.late = late

    @property
    def customer_key(self) -> str:
        """The state key this event belongs to before identity resolution."""
        return self.user_id if self.user_id else anon_key(self.anonymous_id or "")

    def with_user(self, user_id: str) -> "Event":
        """A copy attributed to ``user_id`` (used once a device is linked)."""
        return Event(self.event_id, self.type, self.ts, user_id, self.anonymous_id,
                     self.channel, self.props, self.partition, self.offset, self.late)

    def __repr__(self) -> str:
        return (f"Event({self.event_id!r}, {self.type!r}, ts={self.ts}, "
                f"user={self.user_id!r}, anon={self.anonymous_id!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self.__reduce__()[1] == other.__reduce__()[1]

    def __reduce__(self) -> tuple:
        # Explicit, so pickling works the same compiled (mypyc) or not.
        return (Event, (self.event_id, self.type, self.ts, self.user_id, self.anonymous_id,
                        self.channel, self.props, self.partition, self.offset, self.late))


ANON_PREFIX = "~"


def anon_key(anonymous_id: str) -> str:
    """State key of a device that is not (yet) linked to a customer.

    The prefix keeps device ids and customer ids apart even if a storefront
    happens to reuse the same string for both.

    >>> anon_key("d-9c2e")
    '~d-9c2e'
    """
    return ANON_PREFIX + anonymous_id


def is_anon_key(key: str) -> bool:
    """True when ``key`` names an anonymous device's state.

    >>> is_anon_key(anon_key("d-1")), is_anon_key("c-1")
    (True, False)
    """
    return key.startswith(ANON_PREFIX)
