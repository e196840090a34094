"""Sliding windows: exact against a brute-force count, whatever the arrival order within lateness."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engage.events import Event
from engage.operators.event_time import PartitionClock
from engage.state.customer import CustomerState, StateConfig
from engage.state.windows import (DAY_MS, HOUR_MS, MINUTE_MS, WindowSet, _key_at_least, _key_span,
                                  parse_duration)

CFG = StateConfig.default()
LATENESS = 10 * MINUTE_MS
START = 1_790_000_000_000


def brute_force(events: list[tuple[int, str]], window_ms: int, ref: int, category: str | None) -> int:
    """Count by the window's definition, straight from the raw events."""
    gran = MINUTE_MS if window_ms <= HOUR_MS else HOUR_MS if window_ms <= 2 * DAY_MS else DAY_MS
    top = ref // gran
    span = window_ms // gran
    return sum(1 for ts, cat in events
               if top - span < ts // gran <= top and (category is None or cat == category))


def arrival_order(stamps: list[int], delays: list[int]) -> list[int]:
    """Each event delayed by at most LATENESS: none is later than allowed."""
    return [ts for _, ts in sorted(zip((t + d for t, d in zip(stamps, delays)), stamps))]


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 6 * HOUR_MS), min_size=1, max_size=120),
    seed=st.integers(0, 2 ** 32),
    ref_after=st.integers(0, 40 * DAY_MS),
)
def test_windowed_counts_equal_brute_force_for_any_arrival_within_lateness(
        gaps: list[int], seed: int, ref_after: int) -> None:
    rng = random.Random(seed)
    stamps, t = [], START
    for g in gaps:
        t += g
        stamps.append(t)
    cats = {ts: rng.choice(["sofa", "lamp", "rug"]) for ts in stamps}
    order = arrival_order(stamps, [rng.randint(0, LATENESS) for _ in stamps])
    events = [Event(f"e{i}", "product_view", ts, "c", None, None,
                    {"sku": "s", "category": cats[ts]}) for i, ts in enumerate(order)]
    clock = PartitionClock(0, LATENESS)
    clock.observe(events)
    assert not any(e.late for e in events)
    state = CustomerState("c", CFG)
    for e in events:
        state.apply(e, CFG)
    ref = max(stamps) + ref_after
    truth = [(ts, cats[ts]) for ts in stamps]
    for w in CFG.counts.windows:
        assert state.count(CFG, "product_view", w.name, ref) == brute_force(truth, w.length_ms, ref, None)
        for cat in ("sofa", "lamp", "rug"):
            assert state.count(CFG, f"product_view|{cat}", w.name, ref) == \
                brute_force(truth, w.length_ms, ref, cat)


@settings(max_examples=60, deadline=None)
@given(stamps=st.lists(st.integers(0, 60 * DAY_MS), min_size=1, max_size=60),
       ref_after=st.integers(0, 3 * DAY_MS))
def test_bucketed_window_is_within_one_granule_of_the_exact_sliding_window(
        stamps: list[int], ref_after: int) -> None:
    ws = WindowSet.of(["1h", "24h", "7d", "30d"])
    levels = ws.empty()
    for ts in stamps:
        ws.add(levels, START + ts, ("n",), 1)
    ref = START + max(stamps) + ref_after
    for w in ws.windows:
        wider = sum(1 for ts in stamps if ref - w.length_ms - w.granularity_ms < START + ts <= ref)
        value = ws.value(levels, "n", w.name, ref)
        # Buckets are aligned, so the window covers (ref - W - g, ref] at most
        # and (ref - W, ref] at least, minus what lies in ref's own partial granule.
        assert value <= wider
        assert value >= sum(1 for ts in stamps
                            if ref - w.length_ms + w.granularity_ms <= START + ts <= ref)


@settings(max_examples=150, deadline=None)
@given(stamps=st.lists(st.integers(0, 40 * DAY_MS), min_size=1, max_size=80),
       steps=st.lists(st.integers(0, 3 * DAY_MS), min_size=1, max_size=80))
def test_roll_up_keeps_each_amount_once_where_its_event_time_says(
        stamps: list[int], steps: list[int]) -> None:
    # However pruning interleaves with arrivals, the levels end up exactly as
    # if every event had arrived after the last pruning: a canonical document.
    ws = WindowSet.of(["1h", "24h", "7d", "30d"])
    rolled = ws.empty()
    ref = START
    for ts, step in zip(stamps, steps + [0] * len(stamps)):
        ref += step
        ws.prune(rolled, ref)
        ws.add(rolled, START + ts, ("n",), 1, ref)
    ws.prune(rolled, ref)
    direct = ws.empty()
    for ts in stamps:
        ws.add(direct, START + ts, ("n",), 1, ref)
    assert rolled == direct
    # Each amount is stored once, at one level: nothing counted twice.
    kept = sum(b["n"] for level in rolled for b in level.values())
    assert kept == sum(1 for ts in stamps if (START + ts) // DAY_MS > ref // DAY_MS - 30)


def test_spend_windows_and_pruning_keep_only_what_a_window_can_reach() -> None:
    state = CustomerState("c", CFG)
    for i, amount in enumerate([100.0, 250.0, 80.0]):
        ts = START + i * 20 * DAY_MS
        state.apply(Event(f"o{i}", "order_paid", ts, "c", None, None,
                          {"order_id": f"o{i}", "amount": amount}), CFG)
    ref = START + 40 * DAY_MS
    assert state.spend_in(CFG, ref) == {"30d": 330.0, "365d": 430.0}
    state.apply(Event("v", "search", START + 420 * DAY_MS, "c", None, None, {"query": "x"}), CFG)
    assert state.spend_in(CFG, START + 420 * DAY_MS) == {"30d": 0, "365d": 0}
    assert all(not level for level in state.spend)  # pruned, not just out of range
    assert state.spend_total == 43_000  # cents; lifetime totals never slide


@pytest.mark.parametrize("text, ms", [("90s", 90_000), ("15m", 900_000), ("24h", 86_400_000),
                                       ("7d", 604_800_000), ("2w", 1_209_600_000), ("250ms", 250)])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("bad", ["", "7", "d7", "-1h", "1y", "abc"])
def test_bad_durations_say_how_to_write_one(bad: str) -> None:
    with pytest.raises(ValueError, match="use a number and one of"):
        parse_duration(bad)


@given(st.integers(0, 10**13), st.integers(0, 10**13))
def test_bucket_indexes_compare_as_the_numbers_they_spell(a: int, b: int) -> None:
    assert _key_at_least(str(a), str(b)) == (a >= b)


@given(st.integers(-10**9, 10**9), st.integers(0, 100), st.sampled_from([1, 24, 60, 1440]),
       st.lists(st.integers(0, 10**7), max_size=30))
def test_a_key_span_holds_exactly_the_buckets_of_the_window(top: int, width: int, ratio: int,
                                                            keys: list[int]) -> None:
    low = top - width
    span = _key_span(low, top, ratio)
    inside = {k for k in keys if low < k // ratio <= top}
    if span is None:
        assert not inside
    else:
        first, last = span
        assert {k for k in keys if _key_at_least(str(k), first)
                and _key_at_least(last, str(k))} == inside
