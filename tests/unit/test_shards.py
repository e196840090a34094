"""Shard snapshots: what a restored shard knows, and what it writes again."""

from __future__ import annotations

import orjson

from engage.events import Event
from engage.operators.records import Decision, Merge, StateWrites, Tick
from engage.operators.shards import CustomerShard, IdentityShard, ShardConfig
from engage.state.customer import StateConfig
from engage.state.keys import link_key, state_key

from helpers import HOUR, T0, rule_book

LATENESS = 60_000
CFG = ShardConfig(state=StateConfig.default(), lateness_ms=LATENESS, idle_after_s=60,
                  lineage="L", sources=((0, -1),), rules=rule_book())


def ev(etype: str, ts: int, user: str | None, anon: str | None = None, **props: object) -> Event:
    return Event(f"{etype}-{user}-{ts}", etype, ts, user, anon, None, dict(props))


def writes_of(out: list) -> dict:
    merged: dict = {}
    for item in out:
        if type(item) is StateWrites:
            merged.update(item.writes)
    return merged


def test_a_restored_shard_continues_exactly_and_rewrites_what_its_last_epoch_wrote() -> None:
    shard = CustomerShard(CFG, None)
    # Each batch's tick moves the watermark past its events, which are applied then.
    shard.on_batch([ev("add_to_cart", T0, "c1", sku="A", category="sofa", price=5.0),
                    ev("search", T0 + 1, "c2", query="lamp"), Tick(0, T0 + 2 + LATENESS)])
    shard.snapshot()
    shard.on_batch([ev("search", T0 + 2, "c3", query="rug"), Tick(0, T0 + 3 + LATENESS)])
    second = shard.snapshot()

    shard.on_batch([ev("search", T0 + 3, "c4", query="bed"), Tick(0, T0 + 4 + LATENESS)])
    third = shard.snapshot()

    restored = CustomerShard(CFG, third)
    out, _ = restored.on_batch([Tick(0, T0 + 4 + LATENESS)])
    # What was written in the last two epochs may still have been with the
    # Redis writer when the process died: the restored shard writes it again.
    # c1 and c2 (three epochs back) are not due.
    assert set(writes_of(out)) == {state_key("c3"), state_key("c4")}
    older, _ = CustomerShard(CFG, second).on_batch([Tick(0, T0 + 4 + LATENESS)])
    assert set(writes_of(older)) == {state_key(c) for c in ("c1", "c2", "c3")}

    # The cart reminder survives the restart and fires once the watermark passes.
    fired, _ = restored.on_batch([Tick(0, T0 + 25 * HOUR)])
    actions = [x.doc for x in fired if type(x) is Decision and "reason" not in x.doc]
    assert [a["user_id"] for a in actions] == ["c1"]


def test_a_restored_identity_shard_rewrites_its_recent_links() -> None:
    shard = IdentityShard(CFG, None)
    out, _ = shard.on_batch([ev("product_view", T0, None, "d1", sku="A", category="sofa"),
                             ev("login", T0 + 1, "c1", "d1"), Tick(0, T0 + 2 + LATENESS)])
    assert any(type(x) is Merge and x.customer == "c1" for x in out)
    restored = IdentityShard(CFG, shard.snapshot())
    out, _ = restored.on_batch([Tick(0, T0 + 3 + LATENESS)])
    assert writes_of(out)[link_key("d1")] == b"c1"
    # Device events after the link are re-attributed to the customer.
    out, _ = restored.on_batch([ev("product_view", T0 + 3, None, "d1", sku="B", category="rug"),
                                Tick(0, T0 + 4 + LATENESS)])
    assert [e.user_id for e in out if type(e) is Event] == ["c1"]


def test_device_events_meet_their_login_in_event_time_order_whatever_the_arrival() -> None:
    # The login (partition 1) and the device's views (partition 0) can arrive
    # in either order; the outcome, down to the state written, must not care.
    cfg = ShardConfig(state=StateConfig.default(), lateness_ms=LATENESS, idle_after_s=60,
                      lineage="L", sources=((0, -1), (1, -1)), rules=rule_book())
    before = Event("v1", "product_view", T0, None, "d1", None, {"sku": "A", "category": "sofa"}, 0, 7)
    login = Event("l1", "login", T0 + 10, "c1", "d1", None, {}, 1, 3)
    after = Event("v2", "product_view", T0 + 20, None, "d1", None, {"sku": "B", "category": "rug"}, 0, 8)
    time_passes = [Tick(0, T0 + 30 + LATENESS), Tick(1, T0 + 30 + LATENESS)]

    def run(*batches: list) -> list:
        shard = IdentityShard(cfg, None)
        out: list = []
        for batch in batches:
            out += shard.on_batch(batch)[0]
        return [(type(x).__name__, getattr(x, "event_id", None), getattr(x, "user_id", None))
                for x in out if type(x) is not Tick] + [writes_of(out)]

    in_order = run([before, login, after], time_passes)
    assert run([login], [after, before], time_passes) == in_order
    assert run([after, login, before] + time_passes) == in_order
    # The view before the login joins the customer with the device's history
    # (the Merge); the one after is the customer's own.
    assert in_order[:3] == [("Merge", None, None), ("Event", "l1", "c1"), ("Event", "v2", "c1")]


def test_time_passed_on_to_customers_never_overtakes_a_held_event() -> None:
    shard = IdentityShard(CFG, None)
    out, _ = shard.on_batch([ev("product_view", T0, None, "d1", sku="A", category="sofa"),
                             Tick(0, T0 + LATENESS)])
    # The watermark is T0: the view at T0 is still held, and the time passed
    # on puts customers' watermark just below it.
    assert [x for x in out if type(x) is Event] == []
    assert [x.max_ts - LATENESS for x in out if type(x) is Tick] == [T0 - 1]
    out, _ = shard.on_eof()
    assert [x.max_ts for x in out if type(x) is Tick] == [T0 + LATENESS]


def test_a_flush_interval_writes_each_changed_customer_once_per_interval() -> None:
    cfg = ShardConfig(state=StateConfig.default(), lateness_ms=60_000, idle_after_s=60,
                      lineage="L", sources=((0, -1),), flush_every_ms=3_600_000)
    shard = CustomerShard(cfg, None)
    first, _ = shard.on_batch([ev("search", T0, "c1", query="a"), Tick(0, T0 + 1 + LATENESS)])
    assert set(writes_of(first)) == {state_key("c1")}  # the first batch flushes
    later, _ = shard.on_batch([ev("search", T0 + 1, "c1", query="b"),
                               ev("search", T0 + 2, "c2", query="c"),
                               Tick(0, T0 + 3 + LATENESS)])
    assert writes_of(later) == {}  # held back until the interval passes...
    # ...but what is held back is in the snapshot's rewrite list, and EOF writes it.
    restored = CustomerShard(cfg, shard.snapshot())
    assert restored.rewrite == {"c1", "c2"}
    final, _ = shard.on_eof()
    assert set(writes_of(final)) == {state_key("c1"), state_key("c2")}
    assert orjson.loads(writes_of(final)[state_key("c1")])["lifetime"] == {"search": 2}


def test_customer_time_waits_for_every_identity_shard_to_pass_it_on() -> None:
    # A linked device's order travels through an identity shard; if time
    # reached customers directly it could overtake that order and fire a
    # reminder the order cancels. Customer shards hear time only via identity.
    cfg = ShardConfig(state=StateConfig.default(), lateness_ms=60_000, idle_after_s=60,
                      lineage="L", sources=((0, 0), (0, 1)))
    shard = CustomerShard(cfg, None)
    shard.on_batch([ev("add_to_cart", T0, "c1", sku="A", category="sofa", price=5.0)])
    fired, _ = shard.on_batch([Tick(0, T0 + 30 * HOUR, via=0)])
    assert not [x for x in fired if getattr(x, "topic", "") == "engage.actions"]
    # Identity shard 1 passes on the device's order, then time.
    order = ev("order_paid", T0 + 2 * HOUR, "c1", order_id="o", amount=5.0)
    fired, _ = shard.on_batch([order, Tick(0, T0 + 30 * HOUR, via=1)])
    assert not [x for x in fired if getattr(x, "topic", "") == "engage.actions"]
