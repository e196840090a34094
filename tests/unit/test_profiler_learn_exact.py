"""Profiler.learn keeps exactly the scores (values and key order) of the plain algorithm.

learn caches plain names, groups keys by kind in one pass and finds each
kind's weakest entry in one loop; the reference below is the straightforward
version. Documents store the scores in their dict order, so order counts too.
"""

from __future__ import annotations

import math
import random
from typing import Any

from engage.events import Event
from engage.rules.model import Preferences, RuleSet
from engage.rules.profiler import _PLAIN, DECAY_EPOCH, Profiler, _band
from engage.state.customer import CustomerState, StateConfig
from engage.state.profile import ProfileConfig

CFG = StateConfig.default()
PREFS = Preferences(half_life_ms=3 * 86_400_000, min_score=2.0, top_categories=2, top_styles=1)


def _reference(scores: dict[str, float], e: Event, p: Preferences) -> set[str]:
    weight = dict(p.weights).get(e.type)
    if weight is None or e.late or weight <= 0:
        return set()
    items = e.props.get("items") if e.type == "order_paid" else [e.props]
    if not isinstance(items, list):
        return set()
    touched: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            continue
        category, style = item.get("category"), item.get("style")
        if isinstance(category, str) and _PLAIN.fullmatch(category):
            touched.add("likes:" + category)
        if isinstance(style, str) and _PLAIN.fullmatch(style):
            touched.add("style:" + style)
        price = item.get("price")
        if isinstance(price, (int, float)) and not isinstance(price, bool):
            touched.add("price:" + _band(float(price), p))
    if not touched:
        return touched
    added = math.log2(weight) + (e.ts - DECAY_EPOCH) / p.half_life_ms
    for key in sorted(touched):
        old = scores.get(key)
        if old is None:
            scores[key] = round(added, 2)
        else:
            high, low = (old, added) if old > added else (added, old)
            scores[key] = round(high + math.log2(1.0 + 2.0 ** (low - high)), 2)
    kinds = (("likes:", p.top_categories), ("style:", p.top_styles), ("price:", 1))
    if len(scores) > sum(top + 1 for _, top in kinds):
        for prefix, top in kinds:
            mine = [(v, k) for k, v in scores.items() if k.startswith(prefix)]
            while len(mine) > top + 1:
                lowest = min(v for v, _ in mine)
                weakest = max(k for v, k in mine if v == lowest)
                mine.remove((lowest, weakest))
                del scores[weakest]
    return touched


def _item(rnd: random.Random) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if rnd.random() < 0.9:
        item["category"] = rnd.choice(["sofa", "bed", "lamp", "rug", "chair", "bad/name", "", 3])
    if rnd.random() < 0.8:
        item["style"] = rnd.choice(["boho", "minimal", "classic", "x" * 70])
    if rnd.random() < 0.9:
        item["price"] = rnd.choice([5, 250.0, 1500, True, "12", 199.99])
    return item


def test_learn_matches_the_plain_algorithm() -> None:
    rnd = random.Random(11)
    prof = Profiler(RuleSet((), preferences=PREFS), CFG, ProfileConfig())
    for customer in range(40):
        state = CustomerState(f"c-{customer}", CFG)
        expected: dict[str, float] = {}
        ts = 1_700_000_000_000
        for i in range(150):
            # Bursts at one moment give equal scores: the tie-break by key is exercised.
            ts += rnd.choice([0, 0, 1000, 3_600_000, 86_400_000])
            etype = rnd.choice(["product_view", "favorite", "add_to_cart", "order_paid", "search"])
            props: dict[str, Any] = ({"items": [_item(rnd) for _ in range(rnd.randrange(4))]}
                                     if etype == "order_paid" else _item(rnd))
            e = Event(f"e-{i}", etype, ts, f"c-{customer}", None, "web", props)
            want = _reference(expected, e, PREFS)
            got = prof.learn(state, e)
            assert got == want
            assert list(state.derived.get("prefs", {}).items()) == list(expected.items())
