"""The attribution ledger: last touch, coupons, windows, refunds, replays and bounds."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engage.attribution.ledger import (DAY_MS, MAX_ORDERS, MAX_TOUCHES, Touch, conversion_id,
                                       merge, new_ledger, next_expiry, on_order_paid,
                                       on_order_refunded, prune, record_touch, touches)

T0 = 1_790_000_000_000
H = 3_600_000


def ledger_with(*ts: Touch) -> dict:
    led = new_ledger()
    for t in ts:
        record_touch(led, t)
    return led


def test_last_touch_within_window_gets_the_credit_with_revenue_in_cents() -> None:
    led = ledger_with(Touch(T0, "a-1", "cart", "v1", "A", "push"),
                      Touch(T0 + H, "a-2", "birthday", "v2", "", "email"))
    recs = on_order_paid(led, "c-1", "o-1", T0 + 2 * H, 123.45)
    assert recs[0]["action_id"] == "a-2" and recs[0]["credited"]
    assert recs[0]["revenue_cents"] == 12345 and recs[0]["net_cents"] == 12345
    assert recs[0]["matched_by"] == "last_touch" and not recs[0]["redeemed"]
    assert recs[0]["conversion_id"] == conversion_id("o-1", "a-2")
    # the other rule whose window held the order: recorded, not credited, no revenue
    assert [(r["action_id"], r["credited"], r["net_cents"]) for r in recs[1:]] == [
        ("a-1", False, 0)]


def test_window_bounds_touch_strictly_before_order_and_end_inclusive() -> None:
    led = ledger_with(Touch(T0, "a-1", "cart", window_ms=DAY_MS))
    assert on_order_paid(led, "c-1", "o-same-ms", T0, 10) == []     # fired by the order itself
    assert on_order_paid(led, "c-1", "o-late", T0 + DAY_MS + 1, 10) == []
    assert on_order_paid(led, "c-1", "o-edge", T0 + DAY_MS, 10)[0]["action_id"] == "a-1"


def test_per_rule_windows_differ() -> None:
    led = ledger_with(Touch(T0, "a-short", "cart", window_ms=DAY_MS),
                      Touch(T0 - H, "a-long", "lost", window_ms=30 * DAY_MS))
    recs = on_order_paid(led, "c-1", "o-1", T0 + 2 * DAY_MS, 50)
    assert [r["action_id"] for r in recs] == ["a-long"]  # the newer touch's window is over


def test_coupon_match_wins_over_a_later_touch_and_counts_as_redemption() -> None:
    led = ledger_with(Touch(T0, "a-coupon", "cart", variant="B", coupon="CART10"),
                      Touch(T0 + H, "a-later", "content", channel="email"))
    recs = on_order_paid(led, "c-1", "o-1", T0 + 2 * H, 80, coupon=" cart10 ")
    assert recs[0]["action_id"] == "a-coupon"
    assert recs[0]["redeemed"] and recs[0]["matched_by"] == "coupon"
    assert recs[1]["action_id"] == "a-later" and not recs[1]["credited"]


def test_unknown_coupon_falls_back_to_last_touch_without_redemption() -> None:
    led = ledger_with(Touch(T0, "a-1", "cart", coupon="CART10"))
    rec = on_order_paid(led, "c-1", "o-1", T0 + H, 80, coupon="OTHER")[0]
    assert rec["action_id"] == "a-1" and not rec["redeemed"] and rec["coupon"] == "OTHER"


def test_equal_times_sent_beats_control_then_greatest_action_id() -> None:
    led = ledger_with(Touch(T0, "a-9", "r1", variant="control"),
                      Touch(T0, "a-1", "r2", variant="A"),
                      Touch(T0, "a-2", "r3", variant="A"))
    assert on_order_paid(led, "c-1", "o-1", T0 + 1, 5)[0]["action_id"] == "a-2"


def test_control_touches_are_attributed_the_same_way() -> None:
    led = ledger_with(Touch(T0, "a-c", "cart", variant="control"))
    rec = on_order_paid(led, "c-1", "o-1", T0 + H, 5)[0]
    assert rec["control"] and rec["credited"] and rec["variant"] == "control"


def test_the_same_order_twice_counts_once() -> None:
    led = ledger_with(Touch(T0, "a-1", "cart"))
    assert on_order_paid(led, "c-1", "o-1", T0 + H, 5)
    assert on_order_paid(led, "c-1", "o-1", T0 + H, 5) == []
    assert on_order_paid(led, "c-1", "o-1", T0 + 2 * H, 7) == []


def test_partial_then_full_refund_reverses_and_never_goes_negative() -> None:
    led = ledger_with(Touch(T0, "a-1", "cart"))
    on_order_paid(led, "c-1", "o-1", T0 + H, 100)
    part = on_order_refunded(led, "c-1", "o-1", T0 + 2 * H, 30, "e-r1")
    assert part[0]["net_cents"] == 7000 and not part[0]["reversed"]
    assert on_order_refunded(led, "c-1", "o-1", T0 + 2 * H, 30, "e-r1") == []  # re-sent
    full = on_order_refunded(led, "c-1", "o-1", T0 + 3 * H, 500, "e-r2")
    assert full[0]["net_cents"] == 0 and full[0]["reversed"] and full[0]["refunded_cents"] == 10000
    assert on_order_refunded(led, "c-1", "o-1", T0 + 4 * H, 1, "e-r3") == []


def test_a_refund_record_repeats_the_whole_conversion() -> None:
    led = ledger_with(Touch(T0, "a-1", "cart", coupon="CART10"))
    paid = on_order_paid(led, "c-1", "o-1", T0 + H, 100, coupon="CART10")[0]
    refund = on_order_refunded(led, "c-1", "o-1", T0 + 2 * H, 10, "e-r")[0]
    assert refund["kind"] == "refund" and refund["refund_id"] == "e-r"
    moment = ("kind", "refund_id", "ts", "ts_ms")
    expected = {k: v for k, v in paid.items() if k not in moment}
    expected.update(refunded_cents=1000, net_cents=9000)
    assert {k: v for k, v in refund.items() if k not in moment} == expected
    assert (refund["redeemed"], refund["coupon"]) == (True, "CART10")


def test_refund_after_the_return_period_leaves_the_conversion_standing() -> None:
    led = ledger_with(Touch(T0, "a-1", "cart", window_ms=DAY_MS))
    on_order_paid(led, "c-1", "o-1", T0 + H, 100)
    assert on_order_refunded(led, "c-1", "o-1", T0 + H + DAY_MS + 1, 100, "e-r") == []
    assert on_order_refunded(led, "c-1", "o-1", T0 + H + DAY_MS, 100, "e-r2")[0]["reversed"]


def test_refund_of_an_unattributed_order_does_nothing() -> None:
    assert on_order_refunded(new_ledger(), "c-1", "o-x", T0, 10, "e") == []


def test_prune_and_caps_keep_the_ledger_bounded() -> None:
    led = new_ledger()
    for i in range(MAX_TOUCHES + 10):
        record_touch(led, Touch(T0 + i, f"a-{i:03d}", "r"))
    assert len(led["t"]) == MAX_TOUCHES and led["t"][0][1] == "a-010"
    for i in range(MAX_ORDERS + 5):
        on_order_paid(led, "c-1", f"o-{i}", T0 + 100 + i, 1)
    assert len(led["o"]) == MAX_ORDERS
    assert next_expiry(led) == T0 + 10 + 7 * DAY_MS + 1
    prune(led, T0 + 100 + 30 * DAY_MS)
    assert led == new_ledger() and next_expiry(led) is None


def test_touch_replayed_is_not_held_twice_and_merge_is_a_union() -> None:
    a = ledger_with(Touch(T0, "a-1", "r"), Touch(T0 + 1, "a-2", "r"))
    b = ledger_with(Touch(T0 + 1, "a-2", "r"), Touch(T0 + 2, "a-3", "r"))
    merge(a, b)
    assert [t.action_id for t in touches(a)] == ["a-1", "a-2", "a-3"]


def test_the_ledger_survives_orjson_as_state_does() -> None:
    led = ledger_with(Touch(T0, "a-1", "cart", "v", "B", "sms", DAY_MS, "CART10"))
    on_order_paid(led, "c-1", "o-1", T0 + H, 9.99, coupon="CART10")
    thawed = orjson.loads(orjson.dumps(led))
    assert thawed == led
    assert on_order_refunded(thawed, "c-1", "o-1", T0 + 2 * H, 9.99, "e")[0]["reversed"]


@pytest.mark.parametrize("call, message", [
    (lambda led: record_touch(led, Touch(T0, "", "r")), "action_id"),
    (lambda led: record_touch(led, Touch(T0, "a", "r", window_ms=0)), "window_ms"),
    (lambda led: record_touch(led, Touch("soon", "a", "r")), "ts must be"),  # type: ignore
    (lambda led: on_order_paid(led, "c", "o", T0, -1), "amount"),
    (lambda led: on_order_paid(led, "c", "o", T0, 1, coupon=5), "coupon"),
    (lambda led: on_order_refunded(led, "c", "", T0, 1), "order_id"),
    (lambda led: on_order_paid([], "c", "o", T0, 1), "ledger"),
])
def test_bad_input_says_where_and_why(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(new_ledger())


def test_touch_from_decision_reads_the_payload_coupon() -> None:
    doc = {"action_id": "a-1", "rule_id": "cart_abandon_24h", "rule_version": "3f", "variant": "B",
           "channel": "push", "payload": {"angle": "coupon", "coupon": "CART10"}}
    t = Touch.from_decision(doc, T0, 3 * DAY_MS)
    assert (t.coupon, t.window_ms, t.sent) == ("CART10", 3 * DAY_MS, True)
    control = Touch.from_decision({"action_id": "a-2", "rule_id": "r", "variant": "control",
                                   "channel": None, "payload": {}}, T0)
    assert not control.sent and control.channel == "" and control.coupon == ""


# ---------------------------------------------------------------- properties
touch_st = st.builds(
    lambda i, dt, rule, variant, win, coupon: Touch(T0 + dt, f"a-{i}", rule, "v", variant, "push",
                                                    win, coupon),
    st.integers(0, 40), st.integers(0, 20 * DAY_MS), st.sampled_from(["r1", "r2", "r3"]),
    st.sampled_from(["A", "B", "control", ""]), st.sampled_from([DAY_MS, 7 * DAY_MS, 14 * DAY_MS]),
    st.sampled_from(["", "C1", "C2"]))
event_st = st.one_of(
    st.tuples(st.just("touch"), touch_st),
    st.tuples(st.just("paid"), st.tuples(st.integers(0, 8), st.integers(0, 25 * DAY_MS),
                                         st.integers(0, 100_000) .map(lambda c: c / 100),
                                         st.sampled_from([None, "C1", "c2", "X"]))),
    st.tuples(st.just("refund"), st.tuples(st.integers(0, 8), st.integers(0, 30 * DAY_MS),
                                           st.integers(0, 100_000).map(lambda c: c / 100),
                                           st.integers(0, 5))),
)


def run(events: list) -> tuple[list[dict], dict, int]:
    """Events in event-time order through one ledger, pruning at each; records and paid cents."""
    def when(e):
        return e[1].ts if e[0] == "touch" else T0 + e[1][1]
    # An order id is one order: a later event with its id is a re-send of the first.
    first: dict[int, tuple] = {}
    for e in events:
        if e[0] == "paid":
            first.setdefault(e[1][0], e[1])
    events = [("paid", first[e[1][0]][:3] + e[1][3:]) if e[0] == "paid" else e for e in events]
    led, out, paid, seen = new_ledger(), [], 0, set()
    for e in sorted(events, key=lambda e: (when(e), repr(e))):
        prune(led, when(e))
        if e[0] == "touch":
            record_touch(led, e[1])
        elif e[0] == "paid":
            o, dt, amount, coupon = e[1]
            if f"o-{o}" not in seen:
                seen.add(f"o-{o}")
                paid += round(amount * 100)
            out += on_order_paid(led, "c-1", f"o-{o}", T0 + dt, amount, coupon)
        else:
            o, dt, amount, r = e[1]
            out += on_order_refunded(led, "c-1", f"o-{o}", T0 + dt, amount, f"e-{r}")
    return out, led, paid


def current(records: list[dict]) -> dict[str, dict]:
    """Per conversion id, the record with the most refunded: the conversion's current state."""
    by: dict[str, dict] = {}
    for r in records:
        old = by.get(r["conversion_id"])
        if old is None or r["refunded_cents"] >= old["refunded_cents"]:
            by[r["conversion_id"]] = r
    return by


@settings(max_examples=200, deadline=None)
@given(st.lists(event_st, max_size=60))
def test_attributed_revenue_never_exceeds_paid_and_never_goes_negative(events: list) -> None:
    records, led, paid = run(events)
    state = current(records)
    credited = [r for r in state.values() if r["credited"]]
    assert all(r["net_cents"] >= 0 for r in state.values())
    assert sum(r["net_cents"] for r in credited) <= paid
    # one credited conversion per order at most, and each touch within its window
    assert len({r["order_id"] for r in credited}) == len(credited)
    assert all(r["touch_ts_ms"] < r["ts_ms"] for r in records if r["kind"] == "conversion")
    assert len(led["t"]) <= MAX_TOUCHES and len(led["o"]) <= MAX_ORDERS


@settings(max_examples=100, deadline=None)
@given(st.lists(event_st, max_size=60))
def test_replaying_the_same_events_gives_the_same_records(events: list) -> None:
    first, led1, _ = run(events)
    second, led2, _ = run(list(events))
    assert first == second and led1 == led2
    # and every event sent twice (a re-sent batch) changes nothing
    twice, _, _ = run(events + events)
    assert current(twice) == current(first)
