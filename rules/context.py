"""The rule vocabulary resolved for one customer at one moment of event time.

A :class:`Context` answers ``get(name)`` for every name of
:mod:`engage.rules.vocabulary`, computing each one on first use and
remembering what it answered: that record becomes the action's ``explain``.

Reads are "as of" the decision's event time where the state allows it: the
cart, order counts and order dates exactly (the cart is an operation set,
orders keep their times), windowed counts at the bucket of that time. A
timed trigger decided when the watermark passes its due time therefore sees
the same cart and orders in every run, whatever arrived after the due time.
"""

from __future__ import annotations

from typing import Any, Mapping

from engage.events import Event
from engage.rules.policy import consent_allows
from engage.state.customer import CustomerState, StateConfig

DAY_MS = 86_400_000
_MISSING = object()


class Context:
    """Lazily resolved names for one decision, with a record of what was read.

    >>> from engage.state.customer import CustomerState, StateConfig
    >>> cfg = StateConfig.default()
    >>> ctx = Context(CustomerState("c-1", cfg), cfg, as_of=1_000_000)
    >>> ctx.get("orders"), ctx.get("cart_items"), ctx.seen
    (0, 0, {'orders': 0, 'cart_items': 0})
    """

    def __init__(self, state: CustomerState, cfg: StateConfig, as_of: int,
                 event: Event | None = None, change: Mapping[str, Any] | None = None,
                 profile: Mapping[str, Any] | None = None) -> None:
        self.state = state
        self.cfg = cfg
        self.as_of = as_of
        self.event = event
        self.change = change or {}
        self.profile = profile or {}
        self.seen: dict[str, Any] = {}
        self._cart: dict[str, list[Any]] | None = None

    def get(self, name: str) -> Any:
        """The value of ``name`` (None when the customer has none)."""
        value = self.seen.get(name, _MISSING)
        if value is _MISSING:
            value = self._resolve(name)
            self.seen[name] = value
        return value

    # ------------------------------------------------------------------ resolving
    def _lines(self) -> dict[str, list[Any]]:
        if self._cart is None:
            self._cart = self.state.cart.lines(self.as_of)
        return self._cart

    def _order_times(self) -> list[int]:
        """Event times of the customer's orders at or before ``as_of`` that are remembered."""
        return sorted(ts for ts in self.state.recent_orders.values() if ts <= self.as_of)

    def _resolve(self, name: str) -> Any:
        s = self.state
        if name.startswith("event."):
            return self._event_field(name[6:])
        if name.startswith("change."):
            return self.change.get(name[7:])
        if name.startswith("count:"):
            _, counter, window = name.split(":", 2)
            try:
                return s.count(self.cfg, counter, window, self.as_of)
            except KeyError:
                return None
        if name.startswith("consented:"):
            return consent_allows(s.consent, name[10:])
        if name == "user_id":
            return s.key
        if name == "orders":
            later = sum(1 for ts in s.recent_orders.values() if ts > self.as_of)
            return s.orders - later
        if name == "lifetime_spend":
            return s.spend_total / 100
        if name == "cart_items":
            return sum(line[0] for line in self._lines().values())
        if name == "cart_value":
            return round(sum(line[0] * line[1] for line in self._lines().values()), 2)
        if name == "cart":
            return [{"sku": sku, "quantity": q, "price": p, "category": c}
                    for sku, (q, p, c, _) in sorted(self._lines().items())]
        if name == "cart_categories":
            return sorted({line[2] for line in self._lines().values()})
        if name == "days_since_last_order":
            times = self._order_times()
            last = times[-1] if times else (s.last_order_ts if s.last_order_ts is not None
                                            and s.last_order_ts <= self.as_of else None)
            return None if last is None else (self.as_of - last) // DAY_MS
        if name == "days_since_first_order":
            first = s.first_order_ts
            return None if first is None or first > self.as_of else (self.as_of - first) // DAY_MS
        if name == "days_since_last_visit":
            seen = [ts for ts in s.last_seen.values() if ts <= self.as_of]
            return (self.as_of - max(seen)) // DAY_MS if seen else None
        if name in ("region", "timezone", "preferred_channel", "birthday"):
            entry = s.profile.get(name)
            return entry[0] if entry else None
        if name == "tags":
            if "tags" in self.profile:
                return list(self.profile["tags"])
            return sorted(s.derived.get("tags", ()))
        if name in ("segment", "stage", "tier"):
            if name in self.profile:
                return self.profile[name]
            entry = s.derived.get(name)
            return entry[0] if entry else None
        if name in ("churn_risk", "repurchase_30d"):
            if name in self.profile:
                return self.profile[name]
            score = s.derived.get("scores", {}).get(name)
            return score[0] if score else None
        if name.startswith("spend_"):
            spend = s.spend_in(self.cfg, self.as_of)
            return spend.get(name[6:])
        counter, _, window = name.rpartition("_")
        if counter:
            try:
                return s.count(self.cfg, counter, window, self.as_of)
            except KeyError:
                return None
        return None

    def _event_field(self, field: str) -> Any:
        e = self.event
        if e is None:
            return None
        if field.startswith("properties."):
            return e.props.get(field[11:])
        return {"type": e.type, "channel": e.channel, "ts": e.ts,
                "event_id": e.event_id}.get(field)
