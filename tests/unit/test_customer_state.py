"""Per-customer state: carts, orders, merges, storage round trip."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from engage.events import Event
from engage.state.customer import CustomerState, StateConfig

from helpers import DAY, HOUR, T0

CFG = StateConfig.default()


def ev(etype: str, ts: int, **props: object) -> Event:
    return Event(f"{etype}-{ts}", etype, ts, "c", None, None, dict(props))


def reminder(s: CustomerState) -> list | None:
    return s.cart.view(CFG.cart_abandon_after_ms).get("reminder")


def test_an_order_inside_24h_settles_the_cart_and_its_reminder() -> None:
    s = CustomerState("c", CFG)
    s.apply(ev("add_to_cart", T0, sku="A", category="sofa", price=10.0), CFG)
    assert reminder(s) == [T0 + 24 * HOUR, ["add_to_cart-%d" % T0]]
    s.apply(ev("order_paid", T0 + 3 * HOUR, order_id="o1", amount=10.0,
               items=[{"sku": "A", "price": 10.0}]), CFG)
    assert reminder(s) is None and not s.cart.lines(s.max_ts)


def test_an_order_of_other_items_leaves_the_rest_of_the_cart() -> None:
    s = CustomerState("c", CFG)
    s.apply(ev("add_to_cart", T0, sku="A", category="sofa", price=10.0), CFG)
    s.apply(ev("add_to_cart", T0 + 1, sku="B", category="lamp", price=5.0), CFG)
    s.apply(ev("order_paid", T0 + HOUR, order_id="o1", amount=5.0, items=[{"sku": "B"}]), CFG)
    assert list(s.cart.lines(s.max_ts)) == ["A"]


def test_a_later_add_pushes_the_reminder_back() -> None:
    s = CustomerState("c", CFG)
    s.apply(ev("add_to_cart", T0, sku="A", category="sofa", price=10.0), CFG)
    s.apply(ev("add_to_cart", T0 + 2 * HOUR, sku="B", category="lamp", price=5.0), CFG)
    due, ids = reminder(s)  # type: ignore[misc]
    assert due == T0 + 26 * HOUR and len(ids) == 2


def test_emptying_the_cart_cancels_the_reminder() -> None:
    s = CustomerState("c", CFG)
    s.apply(ev("add_to_cart", T0, sku="A", category="sofa", price=10.0), CFG)
    s.apply(ev("remove_from_cart", T0 + 1, sku="A", category="sofa", price=10.0), CFG)
    assert reminder(s) is None and not s.cart.lines(s.max_ts)


def test_a_resent_order_counts_once_and_refunds_reduce_spend() -> None:
    s = CustomerState("c", CFG)
    s.apply(ev("order_paid", T0, order_id="o1", amount=100.0), CFG)
    dup = ev("order_paid", T0 + 5, order_id="o1", amount=100.0)
    dup.event_id = "another-id"
    s.apply(dup, CFG)
    s.apply(ev("order_refunded", T0 + DAY, order_id="o1", amount=30.0, reason="size"), CFG)
    assert s.orders == 1 and s.spend_total == 7_000  # cents
    assert s.first_order_ts == s.last_order_ts == T0
    assert s.spend_in(CFG, T0 + DAY) == {"30d": 70.0, "365d": 70.0}


def test_late_events_count_in_lifetime_totals_but_not_in_windows() -> None:
    s = CustomerState("c", CFG)
    e = ev("order_paid", T0, order_id="o1", amount=50.0)
    e.late = True
    s.apply(e, CFG)
    assert s.orders == 1 and s.spend_total == 5_000 and s.lifetime["order_paid"] == 1
    assert s.spend_in(CFG, T0) == {"30d": 0, "365d": 0}
    assert s.count(CFG, "order_paid", "24h", T0) == 0 and s.late_events == 1


def test_profile_and_consent_are_last_write_wins_in_event_time() -> None:
    s = CustomerState("c", CFG)
    s.apply(ev("consent_update", T0 + 10, channel="sms", granted=False), CFG)
    s.apply(ev("consent_update", T0, channel="sms", granted=True), CFG)  # older, arrives later
    s.apply(ev("profile_update", T0, timezone="Europe/Paris"), CFG)
    assert s.consent["sms"][0] is False and s.profile["timezone"][0] == "Europe/Paris"


def test_storage_round_trip_keeps_everything() -> None:
    s = CustomerState("c", CFG)
    for e in [ev("product_view", T0, sku="A", category="sofa"),
              ev("add_to_cart", T0 + 1, sku="A", category="sofa", price=10.0),
              ev("order_paid", T0 + 2 * DAY, order_id="o", amount=5.0),
              ev("consent_update", T0 + 3, channel="push", granted=True)]:
        s.apply(e, CFG)
    doc = orjson.loads(orjson.dumps(s.to_doc(CFG), option=orjson.OPT_NON_STR_KEYS))
    back = CustomerState.from_doc(doc, CFG)
    assert back.to_doc(CFG) == s.to_doc(CFG)


EVENTS = st.lists(st.tuples(
    st.sampled_from(["product_view", "add_to_cart", "order_paid", "search"]),
    st.integers(0, 40 * DAY), st.sampled_from(["sofa", "lamp"])), max_size=30)


def build(events: list[tuple[str, int, str]], key: str) -> CustomerState:
    s = CustomerState(key, CFG)
    for i, (etype, offset, cat) in enumerate(sorted(events, key=lambda x: x[1])):
        props: dict[str, object] = {"sku": cat, "category": cat, "price": 1.0, "query": "q",
                                    "order_id": f"{key}-{i}", "amount": 2.0}
        s.apply(Event(f"{key}-{i}", etype, T0 + offset, key, None, None, props), CFG)
    return s


@settings(max_examples=80, deadline=None)
@given(device=EVENTS, customer=EVENTS)
def test_merging_a_device_gives_the_same_windows_and_totals_as_one_history(
        device: list, customer: list) -> None:
    merged = build(customer, "c")
    merged.merge(build(device, "d"), CFG)
    ref = T0 + 41 * DAY
    counts: dict[str, int] = {}
    for etype, _, _ in device + customer:
        counts[etype] = counts.get(etype, 0) + 1
    assert merged.lifetime == counts
    assert merged.orders == counts.get("order_paid", 0)
    for name in ("product_view", "add_to_cart|sofa", "search"):
        direct = sum(1 for etype, offset, cat in device + customer
                     if (etype == name or f"{etype}|{cat}" == name)
                     and ref // DAY - 30 < (T0 + offset) // DAY <= ref // DAY)
        assert merged.count(CFG, name, "30d", ref) == direct


def test_freeze_and_thaw_keep_internal_bookkeeping_too() -> None:
    s = CustomerState("c", CFG)
    s.apply(ev("add_to_cart", T0, sku="A", category="sofa", price=10.0), CFG)
    s.apply(ev("order_paid", T0 + HOUR, order_id="o", amount=10.0, items=[{"sku": "A"}]), CFG)
    s.apply(ev("add_to_cart", T0 + 2 * HOUR, sku="B", category="lamp", price=5.0), CFG)
    back = CustomerState.thaw(s.freeze())
    assert back.to_doc(CFG) == s.to_doc(CFG)
    assert back.cart.trigger(T0 + HOUR - 1) == s.cart.trigger(T0 + HOUR - 1) == (T0, [f"add_to_cart-{T0}"])
    assert back.freeze() == s.freeze()


STREAM = st.lists(st.tuples(
    st.sampled_from(["product_view", "add_to_cart", "remove_from_cart", "order_paid", "search"]),
    st.integers(0, 3 * DAY), st.sampled_from(["sofa", "lamp"])), min_size=1, max_size=25)


def _events(spec: list, key: str, user: str | None) -> list[Event]:
    out = []
    for i, (etype, offset, cat) in enumerate(spec):
        props: dict[str, object] = {"sku": cat, "category": cat, "price": 1.0, "query": "q",
                                    "order_id": f"{key}-{i}", "amount": 2.0}
        out.append(Event(f"{key}-{i}", etype, T0 + offset, user, None, None, props))
    return out


def _arrival(events: list[Event], rng: object, lateness: int) -> list[Event]:
    return sorted(events, key=lambda e: e.ts + rng.randint(0, lateness))  # type: ignore[attr-defined]


@settings(max_examples=120, deadline=None)
@given(customer=STREAM, device=STREAM, seed=st.integers(0, 2 ** 32))
def test_the_stored_document_depends_on_the_events_not_their_arrival_or_the_merge_moment(
        customer: list, device: list, seed: int) -> None:
    import random
    lateness = 5 * 60_000
    docs = []
    for attempt in range(2):
        rng = random.Random(seed + attempt)
        mine = _arrival(_events(customer, "c", "c"), rng, lateness)
        theirs = _arrival(_events(device, "d", None), rng, lateness)
        d = CustomerState("~d", CFG)
        merge_at = rng.randint(0, len(mine))
        for e in theirs:
            d.apply(e, CFG)
        s = CustomerState("c", CFG)
        for i, e in enumerate(mine):
            if i == merge_at:
                s.merge(d, CFG)
            s.apply(e, CFG)
        if merge_at == len(mine):
            s.merge(d, CFG)
        docs.append(orjson.loads(orjson.dumps(s.to_doc(CFG))))
    assert docs[0] == docs[1]


def test_states_and_events_pickle_compiled_or_not() -> None:
    import pickle
    s = CustomerState("c", CFG)
    s.apply(ev("add_to_cart", T0, sku="A", category="sofa", price=10.0), CFG)
    back = pickle.loads(pickle.dumps(s))
    assert back.to_doc(CFG) == s.to_doc(CFG) and back.cart.lines(T0) == s.cart.lines(T0)
    e = ev("search", T0, query="x")
    assert pickle.loads(pickle.dumps(e)) == e


@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 12), st.floats(0, 20_000)),
                min_size=1, max_size=60), st.data())
@settings(max_examples=200, deadline=None)
def test_population_scores_are_the_quintiles_of_the_live_customers(values: list, data) -> None:
    # Relative RFM: the sketch takes customers' values coming, changing and going,
    # and scores a customer by the share ranked below (ties half), as an exact
    # computation over the customers still there does: recency and frequency
    # exactly, spend to its 2% buckets.
    from engage.state.profile import Population

    pop = Population()
    live: dict[int, tuple] = {}
    for i, v in enumerate(values):
        pop.move(None, v)
        live[i] = v
        if data.draw(st.booleans()):
            j = data.draw(st.sampled_from(sorted(live)))
            new = data.draw(st.none() | st.just((v[0] + 1, v[1] + 1, v[2] * 1.5)))
            pop.move(live.pop(j), new)
            if new is not None:
                live[j] = new
    population = list(live.values())
    for v in population:
        got = pop.scores(v)
        for measure, key in ((0, lambda x: x[0]), (1, lambda x: x[1])):
            below = sum(1 for w in population if key(w) < key(v))
            ties = sum(1 for w in population if key(w) == key(v))
            assert got[measure] == min(5, 1 + int((below + ties / 2) / len(population) * 5))
        bucket = Population.key(v)[2]
        below = sum(1 for w in population if Population.key(w)[2] < bucket)
        ties = sum(1 for w in population if Population.key(w)[2] == bucket)
        assert got[2] == min(5, 1 + int((below + ties / 2) / len(population) * 5))
        assert all(1 <= s <= 5 for s in got)
