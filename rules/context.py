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

from typing import Any, Callable, Mapping

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

    def read(self, name: str) -> Any:
        """The value of ``name``, as :meth:`get` answers it, but not recorded.

        For the profile's tag conditions: they need no explanation, and
        skipping the record saves most of a lookup. Every resolver is a pure
        read of the state (the cart's lines are kept for the next read), so
        a name read twice answers the same both times.
        """
        return _RESOLVERS[name](self, name)

    # ------------------------------------------------------------------ resolving
    def _lines(self) -> dict[str, list[Any]]:
        if self._cart is None:
            self._cart = self.state.cart.lines(self.as_of)
        return self._cart

    def _order_times(self) -> list[int]:
        """Event times of the customer's orders at or before ``as_of`` that are remembered."""
        return sorted(ts for ts in self.state.recent_orders.values() if ts <= self.as_of)

    def _resolve(self, name: str) -> Any:
        # Tag conditions run after most events: which kind of name this is is
        # worked out once per name (a chain of prefix tests cost a third of
        # the lookups), then each lookup is one dict hit and one call.
        return _RESOLVERS[name](self, name)

    def _count(self, counter: str, window: str) -> Any:
        try:
            return self.state.count(self.cfg, counter, window, self.as_of)
        except KeyError:
            return None

    def _orders(self, _: str) -> int:
        s = self.state
        later = sum(1 for ts in s.recent_orders.values() if ts > self.as_of)
        return s.orders - later

    def _days_since_last_order(self, _: str) -> int | None:
        s = self.state
        times = self._order_times()
        last = times[-1] if times else (s.last_order_ts if s.last_order_ts is not None
                                        and s.last_order_ts <= self.as_of else None)
        return None if last is None else (self.as_of - last) // DAY_MS

    def _days_since_first_order(self, _: str) -> int | None:
        first = self.state.first_order_ts
        return None if first is None or first > self.as_of else (self.as_of - first) // DAY_MS

    def _days_since_last_visit(self, _: str) -> int | None:
        seen = [ts for ts in self.state.last_seen.values() if ts <= self.as_of]
        return (self.as_of - max(seen)) // DAY_MS if seen else None

    def _tags(self, _: str) -> list[str]:
        if "tags" in self.profile:
            return list(self.profile["tags"])
        return sorted(self.state.derived.get("tags", ()))

    def _view(self, name: str) -> Any:
        if name in self.profile:
            return self.profile[name]
        entry = self.state.derived.get(name)
        return entry[0] if entry else None

    def _score(self, name: str) -> Any:
        if name in self.profile:
            return self.profile[name]
        score = self.state.derived.get("scores", {}).get(name)
        return score[0] if score else None

    def _event_field(self, field: str) -> Any:
        e = self.event
        if e is None:
            return None
        if field.startswith("properties."):
            return e.props.get(field[11:])
        return {"type": e.type, "channel": e.channel, "ts": e.ts,
                "event_id": e.event_id}.get(field)


Resolver = Callable[[Context, str], Any]


def _profile_field(ctx: Context, name: str) -> Any:
    entry = ctx.state.profile.get(name)
    return entry[0] if entry else None


def _cart_lines(ctx: Context, _: str) -> list[dict[str, Any]]:
    return [{"sku": sku, "quantity": q, "price": p, "category": c}
            for sku, (q, p, c, _) in sorted(ctx._lines().items())]


_FIXED: dict[str, Resolver] = {
    "user_id": lambda ctx, _: ctx.state.key,
    "orders": Context._orders,
    "lifetime_spend": lambda ctx, _: ctx.state.spend_total / 100,
    "cart_items": lambda ctx, _: sum(line[0] for line in ctx._lines().values()),
    "cart_value": lambda ctx, _: round(sum(line[0] * line[1]
                                           for line in ctx._lines().values()), 2),
    "cart": _cart_lines,
    "cart_categories": lambda ctx, _: sorted({line[2] for line in ctx._lines().values()}),
    "days_since_last_order": Context._days_since_last_order,
    "days_since_first_order": Context._days_since_first_order,
    "days_since_last_visit": Context._days_since_last_visit,
    "region": _profile_field, "timezone": _profile_field,
    "preferred_channel": _profile_field, "birthday": _profile_field,
    "tags": Context._tags,
    "segment": Context._view, "stage": Context._view, "tier": Context._view,
    "churn_risk": Context._score, "repurchase_30d": Context._score,
}
class _Resolvers(dict):  # type: ignore[type-arg]
    """Name -> resolver, each worked out on the first lookup of its name."""

    def __missing__(self, name: str) -> Resolver:
        resolver = self[name] = _resolver_for(name)
        return resolver


#: Every name looked up so far, and how to resolve it (names come from the
#: rule files: a bounded set).
_RESOLVERS: dict[str, Resolver] = _Resolvers()


def _resolver_for(name: str) -> Resolver:
    """How to resolve ``name``: decided from its shape, once per name."""
    if name.startswith("event."):
        field = name[6:]
        return lambda ctx, _: ctx._event_field(field)
    if name.startswith("change."):
        key = name[7:]
        return lambda ctx, _: ctx.change.get(key)
    if name.startswith("count:"):
        _, counter, window = name.split(":", 2)
        return lambda ctx, _: ctx._count(counter, window)
    if name.startswith("consented:"):
        channel = name[10:]
        return lambda ctx, _: consent_allows(ctx.state.consent, channel)
    fixed = _FIXED.get(name)
    if fixed is not None:
        return fixed
    if name.startswith("spend_"):
        window = name[6:]
        return lambda ctx, _: ctx.state.spend_in(ctx.cfg, ctx.as_of).get(window)
    counter, _, window = name.rpartition("_")
    if counter:
        return lambda ctx, _: ctx._count(counter, window)
    return lambda ctx, _: None
