"""One customer's (or one anonymous device's) state, and how events change it.

Pure logic: no I/O, no wall clock. Every update is driven by event time, and
:meth:`CustomerState.merge` folds a device's history into the customer that
logged in on it. Sums, maxima and unions make the result independent of the
order in which a merge and the customer's own events arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from engage.events import CATEGORISED_TYPES, ORDER_TYPES, Event
from engage.state.cart import Cart
from engage.state.windows import HOUR_MS, WindowSet, levels_from_doc, parse_duration

#: How many recent order ids are remembered to ignore a re-sent order.
RECENT_ORDERS = 16
_SPEND = ("spend",)
_ORDERS = ("orders",)


def _cents(amount: float) -> int:
    """A money amount in whole cents."""
    return round(amount * 100)

#: The fields of a :class:`CustomerState`, in the order :meth:`CustomerState.freeze` writes them.
_FIELDS = ("key", "anon_ids", "counts", "spend", "lifetime", "last_seen", "cart",
           "first_order_ts", "last_order_ts", "orders", "spend_total",
           "recent_orders", "max_ts", "profile", "consent", "late_events",
           "marks", "fired", "armed", "derived")
_CART_TYPES = frozenset({"add_to_cart", "remove_from_cart"}) | ORDER_TYPES


@dataclass(frozen=True)
class StateConfig:
    """What per-customer state keeps; built once from configuration.

    >>> StateConfig.default().counts.windows[0].name
    '1h'
    """

    counts: WindowSet
    spend: WindowSet
    cart_abandon_after_ms: int = 24 * 3_600_000
    inactive_ttl_ms: int = 400 * 86_400_000

    @staticmethod
    def default() -> "StateConfig":
        """The windows the contract names: counts 1h/24h/7d/30d, spend 30d/365d."""
        return StateConfig(WindowSet.of(["1h", "24h", "7d", "30d"]),
                           WindowSet.of(["30d", "365d"]))

    @staticmethod
    def from_settings(count_windows: list[str], spend_windows: list[str],
                      cart_abandon_after: str, inactive_ttl: str) -> "StateConfig":
        """Build from duration strings (configuration is data)."""
        return StateConfig(WindowSet.of(count_windows), WindowSet.of(spend_windows),
                           parse_duration(cart_abandon_after), parse_duration(inactive_ttl))


class CustomerState:
    """Everything the engine knows about one customer, kept hot in its worker.

    Every field is a sum, a maximum, a last-write-wins register or a set, so
    the state depends on which events arrived, not on their order.

    >>> cfg = StateConfig.default()
    >>> s = CustomerState("c-1", cfg)
    >>> s.apply(Event("e1", "add_to_cart", 1_000_000, "c-1", None, "web",
    ...                {"sku": "S1", "category": "sofa", "price": 499.0}), cfg)
    >>> s.cart.lines(s.max_ts)
    {'S1': [1, 499.0, 'sofa', 1000000]}
    """

    __slots__ = _FIELDS

    def __init__(self, key: str, cfg: StateConfig) -> None:
        self.key = key
        self.anon_ids: list[str] = []
        self.counts = cfg.counts.empty()          # shared buckets of every counter
        self.spend = cfg.spend.empty()
        self.lifetime: dict[str, int] = {}
        self.last_seen: dict[str, int] = {}
        self.cart = Cart()
        self.first_order_ts: int | None = None
        self.last_order_ts: int | None = None
        self.orders = 0
        # Money in whole cents: integer sums do not depend on the order in
        # which orders arrive, float sums can in their last digits.
        self.spend_total = 0
        self.recent_orders: dict[str, int] = {}   # order id -> event time
        self.max_ts = 0
        self.profile: dict[str, list[Any]] = {}    # field -> [value, ts]
        self.consent: dict[str, list[Any]] = {}    # channel -> [granted, ts]
        self.late_events = 0
        # Kept by the rule runner (engage.rules.decide), here so that they are
        # snapshotted, merged and expired with the rest of the customer:
        self.marks: dict[str, list[Any]] = {}     # event type -> [floor ts, [[ts, event id], ...]]
        self.fired: dict[str, list[int]] = {}     # rule id -> [last decision ts, last period]
        self.armed: dict[str, int] = {}           # schedule rule id -> due time armed
        # The profile derived from all of the above (engage.state.profile):
        # stage/tier/segment -> [name, since], tags -> {tag: since}, prefs
        # (preference scores), scores (the models'), due (its next timer),
        # ml (the models' bookkeeping: engage.models.keeper).
        self.derived: dict[str, Any] = {}

    # ------------------------------------------------------------------ updates
    def apply(self, e: Event, cfg: StateConfig) -> None:
        """Fold one event into the state.

        A late event (beyond the allowed lateness) still counts in lifetime
        totals, orders and profile fields, but not in sliding windows: the
        windows it belongs to may already have been acted upon.
        """
        etype = e.type
        ts = e.ts
        props = e.props
        self.lifetime[etype] = self.lifetime.get(etype, 0) + 1
        if ts > self.last_seen.get(etype, 0):
            self.last_seen[etype] = ts
        # Pruning once per event-time hour keeps stored documents small
        # without paying for a scan on every event. The reference is the
        # start of that hour, so what is kept never depends on which event of
        # the hour came first.
        if ts // HOUR_MS > self.max_ts // HOUR_MS:
            self.max_ts = ts
            self.prune(cfg)
        elif ts > self.max_ts:
            self.max_ts = ts
        ref = self.max_ts // HOUR_MS * HOUR_MS
        if e.late:
            self.late_events += 1
        elif etype in CATEGORISED_TYPES:
            cfg.counts.add(self.counts, ts, (etype, etype + "|" + props["category"]), 1, ref)
        else:
            cfg.counts.add(self.counts, ts, (etype,), 1, ref)

        # A late event must not move the cart: whether it came before or
        # after a reminder was decided would depend on how partitions
        # interleaved, and a replay must decide exactly as the live run did.
        if not e.late and etype in _CART_TYPES:
            if etype == "add_to_cart":
                self.cart.add(props["sku"], ts, props.get("quantity") or 1, e.event_id,
                              props["price"], props["category"])
            elif etype == "remove_from_cart":
                self.cart.add(props["sku"], ts, -(props.get("quantity") or 1), e.event_id,
                              props["price"], props["category"])
            else:
                items = props.get("items")
                skus = [i["sku"] for i in items if isinstance(i, dict) and i.get("sku")] \
                    if items else None
                self.cart.checkout(ts, skus or None)
        if etype == "order_paid":
            self._order_paid(e, cfg)
        elif etype == "order_refunded":
            self._refund(e, cfg)
        elif etype in ("profile_update", "register"):
            for name in ("birthday", "timezone", "region", "preferred_channel"):
                if props.get(name) is not None:
                    self._lww(self.profile, name, props[name], ts)
        elif etype == "consent_update":
            self._lww(self.consent, props["channel"], props["granted"], ts)

    @staticmethod
    def _lww(target: dict[str, list[Any]], name: str, value: Any, ts: int) -> None:
        current = target.get(name)
        # Ties in event time go to the larger value, so arrival order never decides.
        if current is None or (ts, repr(value)) > (current[1], repr(current[0])):
            target[name] = [value, ts]

    def _order_paid(self, e: Event, cfg: StateConfig) -> None:
        order_id = e.props["order_id"]
        if order_id in self.recent_orders:
            return  # the same order re-sent under a new event id: money counts once
        self.recent_orders[order_id] = e.ts
        self._trim_recent_orders()
        amount = _cents(e.props["amount"])
        self.orders += 1
        self.spend_total += amount
        ts = e.ts
        if self.first_order_ts is None or ts < self.first_order_ts:
            self.first_order_ts = ts
        if self.last_order_ts is None or ts > self.last_order_ts:
            self.last_order_ts = ts
        if not e.late:
            ref = self.max_ts // HOUR_MS * HOUR_MS
            cfg.spend.add(self.spend, ts, _SPEND, amount, ref)
            cfg.spend.add(self.spend, ts, _ORDERS, 1, ref)

    def _refund(self, e: Event, cfg: StateConfig) -> None:
        amount = _cents(e.props["amount"])
        self.spend_total -= amount
        if not e.late:
            cfg.spend.add(self.spend, e.ts, _SPEND, -amount, self.max_ts // HOUR_MS * HOUR_MS)

    def _trim_recent_orders(self) -> None:
        while len(self.recent_orders) > RECENT_ORDERS:
            oldest = min(self.recent_orders, key=lambda o: (self.recent_orders[o], o))
            del self.recent_orders[oldest]

    def merge(self, other: "CustomerState", cfg: StateConfig) -> None:
        """Fold ``other`` (a device's history) into this customer."""
        for anon in other.anon_ids:
            self.add_device(anon)
        if other.max_ts // HOUR_MS > self.max_ts // HOUR_MS:
            self.max_ts = other.max_ts
            self.prune(cfg)
        ref = self.max_ts // HOUR_MS * HOUR_MS
        cfg.counts.merge_into(self.counts, other.counts, ref)
        cfg.spend.merge_into(self.spend, other.spend, ref)
        for etype, n in other.lifetime.items():
            self.lifetime[etype] = self.lifetime.get(etype, 0) + n
        for etype, ts in other.last_seen.items():
            if ts > self.last_seen.get(etype, 0):
                self.last_seen[etype] = ts
        self.cart.merge(other.cart)
        for order_id, ts in other.recent_orders.items():
            self.recent_orders.setdefault(order_id, ts)
        self._trim_recent_orders()
        self.orders += other.orders
        self.spend_total += other.spend_total
        if other.first_order_ts is not None:
            self.first_order_ts = (other.first_order_ts if self.first_order_ts is None
                                   else min(self.first_order_ts, other.first_order_ts))
        if other.last_order_ts is not None:
            self.last_order_ts = (other.last_order_ts if self.last_order_ts is None
                                  else max(self.last_order_ts, other.last_order_ts))
        self.max_ts = max(self.max_ts, other.max_ts)
        self.late_events += other.late_events
        for name, (value, ts) in other.profile.items():
            self._lww(self.profile, name, value, ts)
        for channel, (granted, ts) in other.consent.items():
            self._lww(self.consent, channel, granted, ts)
        for etype, (floor, pairs) in other.marks.items():
            mine = self.marks.get(etype)
            if mine is None:
                self.marks[etype] = [floor, [list(p) for p in pairs]]
                continue
            merged = sorted({(p[0], p[1]) for p in mine[1]} | {(p[0], p[1]) for p in pairs})
            mine[0] = max(mine[0], floor)
            mine[1] = [list(p) for p in merged]
        for rule_id, (last, period) in other.fired.items():
            mine_fired = self.fired.get(rule_id)
            self.fired[rule_id] = [last, period] if mine_fired is None else \
                [max(mine_fired[0], last), max(mine_fired[1], period)]

    def add_device(self, anonymous_id: str) -> None:
        """Record a device linked to this customer (kept sorted: a set, not a history)."""
        if anonymous_id not in self.anon_ids:
            self.anon_ids.append(anonymous_id)
            self.anon_ids.sort()

    def prune(self, cfg: StateConfig) -> None:
        """Drop window buckets that have slid out of every window.

        The reference is the start of the latest event-time hour, not the
        latest event itself: whichever event of that hour arrived first, the
        same buckets are kept.
        """
        ref = self.max_ts // HOUR_MS * HOUR_MS
        cfg.counts.prune(self.counts, ref)
        cfg.spend.prune(self.spend, ref)

    # ------------------------------------------------------------------ views
    def windows(self, cfg: StateConfig, ref_ts: int) -> dict[str, dict[str, float]]:
        """Window values by counter name, as seen at event time ``ref_ts``."""
        values = cfg.counts.values(self.counts, ref_ts)
        return {name: values[name] for name in sorted(values) if any(values[name].values())}

    def count(self, cfg: StateConfig, name: str, window: str, ref_ts: int) -> float:
        """One windowed count, e.g. ``count(cfg, "product_view", "7d", t)``."""
        return cfg.counts.value(self.counts, name, window, ref_ts)

    def spend_in(self, cfg: StateConfig, ref_ts: int) -> dict[str, float]:
        """Spend per spend window (refunds subtracted), as seen at ``ref_ts``."""
        values = cfg.spend.values(self.spend, ref_ts).get(_SPEND[0])
        if not values:
            return {w.name: 0 for w in cfg.spend.windows}
        return {name: cents / 100 for name, cents in values.items()}

    def window_orders(self, cfg: StateConfig, window: str, ref_ts: int) -> tuple[float, float]:
        """Orders and spend (currency units) in the spend window ``window`` at ``ref_ts``."""
        orders = cfg.spend.value(self.spend, _ORDERS[0], window, ref_ts)
        cents = cfg.spend.value(self.spend, _SPEND[0], window, ref_ts)
        return orders, cents / 100

    def window_exit(self, cfg: StateConfig, window: str, ref_ts: int) -> int | None:
        """When the oldest amount in the spend window ``window`` at ``ref_ts`` leaves it."""
        return cfg.spend.next_exit(self.spend, window, ref_ts)

    # ------------------------------------------------------------------ storage
    def to_doc(self, cfg: StateConfig) -> dict[str, Any]:
        """The JSON document stored in Redis (compact, but readable).

        ``orders.spend`` is in currency units; the ``spend`` window buckets
        are in cents.
        """
        doc: dict[str, Any] = {
            "id": self.key,
            "max_ts": self.max_ts,
            "counts": self.counts,
            "lifetime": self.lifetime,
            "last_seen": self.last_seen,
        }
        if self.anon_ids:
            doc["anon_ids"] = self.anon_ids
        if any(self.spend):
            doc["spend"] = self.spend
        cart = self.cart.view(cfg.cart_abandon_after_ms)
        if len(cart) > 1 or cart["lines"]:
            doc["cart"] = cart
        if self.orders or self.spend_total:
            doc["orders"] = {"count": self.orders, "spend": self.spend_total / 100,
                             "first_ts": self.first_order_ts, "last_ts": self.last_order_ts,
                             "recent": self.recent_orders}
        if self.profile:
            doc["profile"] = self.profile
        if self.consent:
            doc["consent"] = self.consent
        if self.late_events:
            doc["late"] = self.late_events
        if self.fired:
            doc["rules"] = self.fired
        if self.derived:
            # The profile timer's due time, the customer's share of the shard's
            # population and the models' pending examples are the shard's
            # business (snapshots keep them); the scores themselves are shown.
            doc["derived"] = {k: v for k, v in self.derived.items()
                              if k not in ("due", "pop", "ml")}
        return doc

    @staticmethod
    def from_doc(doc: dict[str, Any], cfg: StateConfig) -> "CustomerState":
        """Rebuild a state from :meth:`to_doc`'s document."""
        s = CustomerState(doc["id"], cfg)
        s.max_ts = doc.get("max_ts", 0)
        s.counts = levels_from_doc(doc["counts"]) if "counts" in doc else cfg.counts.empty()
        s.lifetime = dict(doc.get("lifetime", {}))
        s.last_seen = dict(doc.get("last_seen", {}))
        s.anon_ids = list(doc.get("anon_ids", []))
        if "spend" in doc:
            s.spend = levels_from_doc(doc["spend"])
        s.cart = Cart.from_view(doc.get("cart", {}))
        orders = doc.get("orders")
        if orders:
            s.orders = orders["count"]
            s.spend_total = round(orders["spend"] * 100)
            s.first_order_ts = orders["first_ts"]
            s.last_order_ts = orders["last_ts"]
            s.recent_orders = dict(orders.get("recent", {}))
        s.profile = {k: list(v) for k, v in doc.get("profile", {}).items()}
        s.consent = {k: list(v) for k, v in doc.get("consent", {}).items()}
        s.late_events = doc.get("late", 0)
        s.fired = {k: list(v) for k, v in doc.get("rules", {}).items()}
        s.derived = orjson.loads(orjson.dumps(doc.get("derived", {})))   # a deep copy
        return s

    def freeze(self) -> bytes:
        """Everything, internal bookkeeping included, as compact bytes (for snapshots).

        JSON through orjson: several times cheaper than pickling these
        nested dicts, and snapshots take one per customer changed.
        """
        values = [getattr(self, name) for name in _FIELDS]
        values[_FIELDS.index("cart")] = self.cart.__getstate__()
        return orjson.dumps(values)

    @staticmethod
    def thaw(raw: bytes) -> "CustomerState":
        """Inverse of :meth:`freeze`."""
        values = orjson.loads(raw)
        s = CustomerState(values[0], _DEFAULT)  # every field is overwritten below
        for name, value in zip(_FIELDS, values):
            if name != "cart":
                setattr(s, name, value)
        cart = Cart()
        cart.__setstate__(values[_FIELDS.index("cart")])
        s.cart = cart
        return s

    def __reduce__(self) -> tuple:
        # Explicit, so pickling works the same compiled (mypyc) or not.
        return (CustomerState.thaw, (self.freeze(),))


_DEFAULT = StateConfig.default()
