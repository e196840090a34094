"""The attribution step: touches and orders in, conversion records and metrics out.

Pure: the step's shard is fed records the way the contact step hands them on.
"""

from __future__ import annotations

import orjson

from engage.attribution.ledger import DAY_MS, Touch
from engage.monitoring import metrics
from engage.operators.attribution import AttributionShard, kafka_messages, to_attribution
from engage.operators.records import Emit, Forget, Order, Touched

T0 = 1_790_000_000_000
H = 3_600_000


def touched(user: str, ts: int, aid: str, rule: str = "browse", variant: str = "A",
            coupon: str = "", window: int = 7 * DAY_MS) -> Touched:
    return Touched(user, Touch(ts, aid, rule, "v1", variant, "email", window, coupon))


def paid(user: str, ts: int, order: str, amount: float, coupon: str | None = None) -> Order:
    return Order("order_paid", user, order, ts, amount, coupon, f"e-{order}")


def refunded(user: str, ts: int, order: str, amount: float, event_id: str) -> Order:
    return Order("order_refunded", user, order, ts, amount, None, event_id)


def records(out: list[Emit]) -> list[dict]:
    assert all(e.topic == "engage.conversions" for e in out)
    return [orjson.loads(e.value) for e in out]


def value(counter, *labels: str) -> float:
    return counter.labels(*labels)._value.get()


def test_orders_are_credited_refunds_reverse_and_metrics_follow() -> None:
    shard = AttributionShard(grace_ms=5 * 60_000)
    labels = ("step_rule", "B", "email")
    before = [value(m, *labels) for m in (metrics.ATTRIBUTION_TOUCHES, metrics.CONVERSIONS,
                                          metrics.REDEMPTIONS, metrics.ATTRIBUTED_REVENUE,
                                          metrics.REFUNDED_REVENUE, metrics.CONVERSIONS_REVERSED)]
    out, retain = shard.on_batch([
        touched("c1", T0, "a-1", "step_rule", "B", coupon="OFF300"),
        touched("c1", T0 + H, "a-2", "other"),
        paid("c1", T0 + 2 * H, "o-1", 80.0, coupon="off300 "),
    ])
    assert retain is False   # a shard is never discarded
    recs = records(out)
    assert [(r["action_id"], r["credited"], r["matched_by"], r["redeemed"]) for r in recs] == [
        ("a-1", True, "coupon", True), ("a-2", False, "window", False)]
    assert out[0].key == b"c1"
    recs = records(shard.on_batch([refunded("c1", T0 + DAY_MS, "o-1", 30.0, "e-r1"),
                                   refunded("c1", T0 + DAY_MS, "o-1", 30.0, "e-r1"),   # re-sent
                                   refunded("c1", T0 + 2 * DAY_MS, "o-1", 60.0, "e-r2")])[0])
    assert [(r["kind"], r["action_id"], r["refunded_cents"], r["reversed"]) for r in recs] == [
        ("refund", "a-1", 3000, False), ("refund", "a-2", 3000, False),
        ("refund", "a-1", 8000, True), ("refund", "a-2", 8000, True)]
    after = [value(m, *labels) for m in (metrics.ATTRIBUTION_TOUCHES, metrics.CONVERSIONS,
                                         metrics.REDEMPTIONS, metrics.ATTRIBUTED_REVENUE,
                                         metrics.REFUNDED_REVENUE, metrics.CONVERSIONS_REVERSED)]
    # touches 1, conversions 1, redemptions 1, revenue 8000, refunded 3000 + 5000, reversed 1
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1, 8000, 8000, 1]


def test_a_customer_never_touched_costs_nothing() -> None:
    shard = AttributionShard(grace_ms=0)
    out, _ = shard.on_batch([paid("c9", T0, "o-9", 10.0)])
    assert out == [] and shard.ledgers == {}


def test_ledgers_are_dropped_once_event_time_leaves_their_windows_behind() -> None:
    shard = AttributionShard(grace_ms=H)
    shard.on_batch([touched("c1", T0, "a-1", window=DAY_MS), touched("c2", T0, "a-2",
                                                                     window=3 * DAY_MS)])
    # time moves on through another customer's touch: c1's window (and the grace) passed
    shard.on_batch([touched("c3", T0 + DAY_MS + H + 1, "a-3")])
    assert set(shard.ledgers) == {"c2", "c3"}
    # an order credited keeps the ledger through its return period, then it goes too
    shard.on_batch([paid("c2", T0 + 2 * DAY_MS, "o-2", 5.0)])
    shard.on_batch([touched("c4", T0 + 2 * DAY_MS + 3 * DAY_MS + H + 2, "a-4")])
    assert set(shard.ledgers) == {"c3", "c4"}


def test_an_order_late_within_the_grace_still_finds_its_touch() -> None:
    shard = AttributionShard(grace_ms=10 * 60_000)
    shard.on_batch([touched("c1", T0, "a-1", window=H)])
    shard.on_batch([touched("c2", T0 + H + 5 * 60_000, "a-2")])   # time runs ahead elsewhere
    out, _ = shard.on_batch([paid("c1", T0 + H, "o-1", 1.0)])     # late, but inside the grace
    assert [r["action_id"] for r in records(out)] == ["a-1"]


def test_forget_drops_the_ledger() -> None:
    shard = AttributionShard(grace_ms=0)
    shard.on_batch([touched("c1", T0, "a-1")])
    shard.on_batch([Forget("c1", "req-1")])
    assert "c1" not in shard.ledgers
    out, _ = shard.on_batch([paid("c1", T0 + H, "o-1", 10.0)])
    assert out == []
    assert "c1" not in AttributionShard(0, shard.snapshot()).ledgers


def test_a_restored_shard_continues_exactly_like_the_original() -> None:
    first = [touched(f"c{i}", T0 + i, f"a-{i}", variant="AB"[i % 2]) for i in range(50)]
    later = [paid(f"c{i}", T0 + H + i, f"o-{i}", 10.0 + i) for i in range(0, 50, 3)]
    later += [refunded(f"c{i}", T0 + 2 * H + i, f"o-{i}", 5.0, f"r-{i}") for i in range(0, 50, 6)]
    straight = AttributionShard(grace_ms=0)
    straight.on_batch(first)
    snap = straight.snapshot()
    expected, _ = straight.on_batch(later)
    restored = AttributionShard(grace_ms=0, resume=snap)
    got, _ = restored.on_batch(later)
    assert got == expected and len(got) > 10
    # incremental snapshots: a second snapshot with nothing changed re-serialises nothing
    restored.snapshot()
    frozen = dict(restored.frozen)
    restored.snapshot()
    assert all(restored.frozen[k] is frozen[k] for k in frozen)


def test_an_order_the_ledger_cannot_count_is_skipped_and_metered_not_fatal() -> None:
    shard = AttributionShard(grace_ms=0)
    before = metrics.ATTRIBUTION_SKIPPED.labels("bad_order")._value.get()
    out, _ = shard.on_batch([touched("c1", T0, "a-1"), paid("c1", T0 + 1, "o-1", 1e15),
                             paid("c1", T0 + 2, "o-2", 3.0)])
    assert [r["order_id"] for r in records(out)] == ["o-2"]
    assert metrics.ATTRIBUTION_SKIPPED.labels("bad_order")._value.get() == before + 1


def test_the_router_keeps_a_customer_on_its_customer_shard() -> None:
    from engage.operators.routing import shard_of

    route = to_attribution(4)
    items = [touched("c1", T0, "a-1"), paid("c2", T0, "o", 1.0), Forget("c3", "r"),
             Emit("engage.actions", b"c1", b"{}")]
    bundles = dict(route(items))
    assert sum(len(b) for b in bundles.values()) == 3
    for key, bundle in bundles.items():
        for x in bundle:
            assert shard_of(getattr(x, "user_id", None) or x.customer, 4) == key
    assert kafka_messages([("0", items[3]), items[3], ("1", items[0])]) == [items[3], items[3]]


def test_a_customer_touched_every_day_keeps_a_bounded_ledger_heap_and_snapshot() -> None:
    shard = AttributionShard(grace_ms=H)
    for day in range(365):
        shard.on_batch([touched("c1", T0 + day * DAY_MS, f"a-{day}"),
                        touched(f"other-{day}", T0 + day * DAY_MS, f"b-{day}", window=DAY_MS)])
    assert len(shard.ledgers["c1"]["t"]) <= 8            # a 7-day window's touches
    assert len(shard.expiry) <= 2 * len(shard.due) + 64  # stale looks are swept out
    assert len(shard.ledgers) <= 3                       # one-day windows long gone
    first = len(shard.snapshot())
    for day in range(365, 730):
        shard.on_batch([touched("c1", T0 + day * DAY_MS, f"a-{day}")])
    assert len(shard.snapshot()) <= first * 1.5          # a second year costs nothing more
    restored = AttributionShard(grace_ms=H, resume=shard.snapshot())
    assert restored.due == shard.due and restored.ledgers == shard.ledgers
