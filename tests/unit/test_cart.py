"""The cart depends on which operations happened, never on the order they arrived in."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from engage.state.cart import Cart

DELAY = 1000
LATENESS = 300

OPS = st.lists(st.tuples(st.sampled_from(["add", "remove", "order", "order_items"]),
                         st.integers(0, 5000), st.sampled_from(["A", "B", "C"]),
                         st.integers(1, 3)), max_size=40)


def apply(cart: Cart, op: tuple, i: int) -> None:
    kind, ts, sku, qty = op
    if kind == "add":
        cart.add(sku, ts, qty, f"e{i}", 10.0 * qty, "cat")
    elif kind == "remove":
        cart.add(sku, ts, -qty, f"e{i}", 10.0, "cat")
    elif kind == "order":
        cart.checkout(ts, None)
    else:
        cart.checkout(ts, [sku])


@settings(max_examples=300, deadline=None)
@given(ops=OPS, seed=st.integers(0, 2 ** 32))
def test_any_arrival_within_lateness_and_any_compaction_gives_the_same_cart(ops: list, seed: int) -> None:
    rng = random.Random(seed)
    indexed = list(enumerate(ops))
    reference = Cart()
    for i, op in sorted(indexed, key=lambda x: (x[1][1], x[0])):
        apply(reference, op, i)

    # Arrive in any order in which no operation is later than the lateness.
    arrival = sorted(indexed, key=lambda x: x[1][1] + rng.randint(0, LATENESS))
    cart = Cart()
    max_ts = -10 ** 9
    horizon = -10 ** 9
    for i, op in arrival:
        assert op[1] >= max_ts - LATENESS  # delays are bounded: nothing is late
        apply(cart, op, i)
        max_ts = max(max_ts, op[1])
        if rng.random() < 0.3:
            horizon = max(horizon, max_ts - LATENESS - DELAY)
            cart.compact(horizon)

    for as_of in range(max(0, horizon + DELAY), 6001, 250):
        assert cart.lines(as_of) == reference.lines(as_of), as_of
        assert cart.trigger(as_of) == reference.trigger(as_of), as_of


@settings(max_examples=200, deadline=None)
@given(device=OPS, customer=OPS)
def test_merging_a_device_cart_is_the_same_as_one_cart_that_saw_both(device: list, customer: list) -> None:
    both = Cart()
    for i, op in enumerate(device):
        apply(both, op, i)
    for i, op in enumerate(customer):
        apply(both, op, 1000 + i)
    d, c = Cart(), Cart()
    for i, op in enumerate(device):
        apply(d, op, i)
    for i, op in enumerate(customer):
        apply(c, op, 1000 + i)
    c.merge(d)
    for as_of in range(0, 6001, 500):
        assert c.lines(as_of) == both.lines(as_of)
        assert c.trigger(as_of) == both.trigger(as_of)


def test_a_reminder_is_decided_on_the_cart_as_of_its_due_time() -> None:
    cart = Cart()
    cart.add("A", 100, 1, "e1", 10.0, "sofa")
    cart.add("B", 100 + DELAY + 50, 1, "e2", 5.0, "lamp")  # after the first due: arrives early
    assert cart.trigger(100 + DELAY) == (100, ["e1"])
    cart.checkout(100 + DELAY + 60, None)
    assert cart.trigger(100 + DELAY) == (100, ["e1"])  # the later order cannot reach back
    assert cart.trigger(100 + DELAY + 60) is None


def test_an_order_of_more_skus_than_settle_points_kept_clears_them_all() -> None:
    cart = Cart()
    skus = [f"S{i}" for i in range(80)]
    for i, sku in enumerate(skus):
        cart.add(sku, 100 + i, 1, f"e{i}", 1.0, "c")
    cart.checkout(1000, skus)
    cart.compact(2000)
    assert cart.lines(5000) == {} and cart.view(DELAY)["lines"] == {}
