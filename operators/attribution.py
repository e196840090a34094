"""The attribution step: which orders the engine's messages caused, as they happen.

It sits after the contact step, keyed like the customer shards (shard ``n``
of the customer step feeds shard ``n`` here, on the same worker), and takes:

* :class:`~engage.operators.records.Touched`: an action sent, or a control-
  group decision recorded (the contact step knows which decisions went out);
* :class:`~engage.operators.records.Order`: an ``order_paid`` or
  ``order_refunded`` the customer shard applied;
* :class:`~engage.operators.records.Forget`: an erasure; the customer's
  ledger goes with the rest of them.

Both kinds leave the customer shard in event-time order and nothing
reorders them on the way, so the per-customer ledger
(:mod:`engage.attribution.ledger`: last touch, coupon match, refunds in the
return period) sees a customer's touches and orders as they happened, in a
replay as live. It emits conversion records on ``engage.conversions`` and
keeps the attribution metrics.

Ledgers are kept for customers with a touch still in its window or a
credited order still in its return period, and dropped when event time has
passed both. They live in this step's recovery snapshots (incrementally:
only ledgers changed since the last snapshot are serialised again), so a
restart resumes from the last snapshot and replays what followed it: the
same records again, with the same ``conversion_id`` (readers keep one per
id, see the ledger's docstring). They are not written to Redis: the only
reader is this step.
"""

from __future__ import annotations

import heapq
import logging
import pickle
from typing import Any, Iterable

import orjson

from engage.attribution import ledger as attr
from engage.connectors.kafka import CONVERSIONS_TOPIC
from engage.monitoring import metrics
from engage.operators.records import Emit, Forget, Order, Touched
from engage.operators.routing import Bundles, shard_of

log = logging.getLogger("engage.attribution")

NO_TIME = -(2 ** 63)
#: Bytewax's "discard this key's state?" answer: never, the shard lives as long as the flow.
RETAIN = False


def _labels(rec: dict[str, Any]) -> tuple[str, str, str]:
    return rec["rule_id"], rec["variant"] or "none", rec["channel"] or "none"


class AttributionShard:
    """The ledgers of one shard's customers, and the records their orders produce.

    ``grace_ms`` (the engine's allowed lateness) is how far behind the
    newest time seen a ledger is still kept: a late order inside the
    allowed lateness still finds the touches it falls after.
    """

    def __init__(self, grace_ms: int, resume: bytes | None = None,
                 topic: str = CONVERSIONS_TOPIC) -> None:
        self.grace_ms = grace_ms
        self.topic = topic
        self.ledgers: dict[str, dict[str, Any]] = {}
        self.frozen: dict[str, bytes] = {}     # serialised as of the last snapshot
        self.changed: set[str] = set()
        # When prune may next drop something of each customer; the heap holds those
        # times (and stale ones, skipped when popped: a customer touched every day
        # must not pile up an entry per touch).
        self.due: dict[str, int] = {}
        self.expiry: list[tuple[int, str]] = []
        self.now = NO_TIME
        if resume is not None:
            snap = pickle.loads(resume)
            self.frozen, self.due, self.now = snap["frozen"], snap["due"], snap["now"]
            self.expiry = [(at, c) for c, at in self.due.items()]
            heapq.heapify(self.expiry)
            # Few and small (touched customers, 32 touches at most): all thawed at once.
            self.ledgers = {c: orjson.loads(raw) for c, raw in self.frozen.items()}
            metrics.ATTRIBUTION_CUSTOMERS.inc(len(self.ledgers))

    def on_batch(self, items: list[Any]) -> tuple[list[Emit], bool]:
        """Apply touches, orders and erasures in arrival order; the conversion records."""
        out: list[Emit] = []
        for item in items:
            kind = type(item)
            if kind is Touched:
                self._touch(item)
            elif kind is Order:
                self._order(item, out)
            elif kind is Forget:
                self._drop(item.customer)
        self._expire()
        return out, RETAIN

    def on_eof(self) -> tuple[list[Emit], bool]:
        """Nothing is pending here: records leave with the batch that caused them."""
        return [], RETAIN

    def _touch(self, item: Touched) -> None:
        touch = item.touch
        self.now = max(self.now, touch.ts)
        led = self.ledgers.get(item.user_id)
        if led is None:
            led = self.ledgers[item.user_id] = attr.new_ledger()
            metrics.ATTRIBUTION_CUSTOMERS.inc()
        if attr.record_touch(led, touch):
            self.changed.add(item.user_id)
            metrics.ATTRIBUTION_TOUCHES.labels(touch.rule_id, touch.variant or "none",
                                               touch.channel or "none").inc()
            self._schedule(item.user_id, touch.ts + touch.window_ms + 1)

    def _order(self, item: Order, out: list[Emit]) -> None:
        self.now = max(self.now, item.ts)
        led = self.ledgers.get(item.user_id)
        if led is None:
            return   # never touched (or long ago): nothing to credit or reverse
        try:
            if item.kind == "order_paid":
                records = attr.on_order_paid(led, item.user_id, item.order_id, item.ts,
                                             item.amount, item.coupon)
                before = 0
            else:
                before = attr.refunded_cents(led, item.order_id)
                records = attr.on_order_refunded(led, item.user_id, item.order_id, item.ts,
                                                 item.amount, item.event_id)
        except ValueError as exc:
            # The contract lets an amount through that the ledger cannot count
            # (over 1e12): the order stays in the customer's totals, here it is
            # skipped, said and metered; the flow goes on.
            metrics.ATTRIBUTION_SKIPPED.labels("bad_order").inc()
            log.warning("attribution skipped event %s: %s", item.event_id, exc)
            return
        if not records:
            return
        self.changed.add(item.user_id)
        key = item.user_id.encode()
        for rec in records:
            out.append(Emit(self.topic, key, orjson.dumps(rec)))
            if not rec["credited"]:
                continue
            labels = _labels(rec)
            if rec["kind"] == "conversion":
                metrics.CONVERSIONS.labels(*labels).inc()
                metrics.ATTRIBUTED_REVENUE.labels(*labels).inc(rec["revenue_cents"])
                if rec["redeemed"]:
                    metrics.REDEMPTIONS.labels(*labels).inc()
                self._schedule(item.user_id, attr.next_expiry(led) or item.ts)
            else:
                metrics.REFUNDED_REVENUE.labels(*labels).inc(rec["refunded_cents"] - before)
                if rec["reversed"]:
                    metrics.CONVERSIONS_REVERSED.labels(*labels).inc()

    def _schedule(self, customer: str, at: int) -> None:
        """Look at ``customer`` again at ``at``, unless an earlier look is due."""
        if at < self.due.get(customer, at + 1):
            self.due[customer] = at
            heapq.heappush(self.expiry, (at, customer))

    def _drop(self, customer: str) -> None:
        if self.ledgers.pop(customer, None) is not None:
            metrics.ATTRIBUTION_CUSTOMERS.dec()
        self.due.pop(customer, None)
        self.changed.add(customer)

    def _expire(self) -> None:
        """Prune ledgers event time has left behind; drop the ones left empty."""
        horizon = self.now - self.grace_ms
        heap = self.expiry
        while heap and heap[0][0] <= horizon:
            at, customer = heapq.heappop(heap)
            led = self.ledgers.get(customer)
            if led is None or self.due.get(customer) != at:
                continue   # dropped, or superseded by an earlier look
            del self.due[customer]
            attr.prune(led, horizon)
            self.changed.add(customer)
            nxt = attr.next_expiry(led)
            if nxt is None:
                self._drop(customer)
            else:
                self._schedule(customer, nxt)
        if len(heap) > 2 * len(self.due) + 64:
            # Mostly stale entries (superseded looks): rebuilt from what is due.
            self.expiry = [(at, c) for c, at in self.due.items()]
            heapq.heapify(self.expiry)

    def snapshot(self) -> bytes:
        """The shard for Bytewax recovery; ledgers unchanged since the last one are not
        serialised again."""
        for customer in self.changed:
            led = self.ledgers.get(customer)
            if led is None:
                self.frozen.pop(customer, None)
            else:
                self.frozen[customer] = orjson.dumps(led)
        self.changed.clear()
        return pickle.dumps({"frozen": self.frozen, "due": self.due, "now": self.now},
                            protocol=pickle.HIGHEST_PROTOCOL)


def to_attribution(shards: int) -> Any:
    """The router of the contact step's outputs: touches, orders and erasures, bundled per
    customer shard (the same keys as the customer step)."""

    def route(outputs: list[Any]) -> Bundles:
        bundles: dict[str, list[Any]] = {}
        for x in outputs:
            kind = type(x)
            if kind is Touched or kind is Order:
                customer = x.user_id
            elif kind is Forget:
                customer = x.customer
            else:
                continue
            key = shard_of(customer, shards)
            bundle = bundles.get(key)
            if bundle is None:
                bundle = bundles[key] = []
            bundle.append(x)
        return list(bundles.items())

    return route


def kafka_messages(outputs: Iterable[Any]) -> list[Emit]:
    """The Kafka messages among a step's outputs (keyed outputs are unwrapped)."""
    return [x for x in (o[1] if type(o) is tuple else o for o in outputs) if type(x) is Emit]
