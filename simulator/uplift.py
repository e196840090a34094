"""A population whose response to a rule is known, to check the report recovers it.

One rule (the cart reminder's shape: variants A and B at 50/50, 10% held out
as control, B's payload carrying the coupon ``CART10``) touches every
customer once; each customer then orders within the attribution window with
their arm's true probability (by default A 10%, B 15%, control 7%: B five
points above A, control three below). On top, to make the data look like a
shop's and exercise every path of the ledger: some customers also order after
the window closed (never credited), some credited orders are refunded in
part (revenue falls, the conversion stands), some decisions are suppressed
(audited with a reason, never touches) and a few orders are sent twice.

Everything goes through the real pieces: :meth:`engage.rules.model.Action.bucket`
assigns arms, :mod:`engage.attribution.ledger` attributes the orders, and the
docs have the shapes of ``engage.actions`` and ``engage.audit``. Pure and
seeded: the same arguments give the same run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from engage.attribution.ledger import (DAY_MS, Touch, iso, new_ledger, on_order_paid,
                                       on_order_refunded, record_touch)
from engage.rules.model import Action, Variant
from engage.rules.templates import Template

#: 2026-11-01T00:00:00Z: the first day of the simulated month.
START_MS = 1_793_491_200_000
RULE_ID = "cart_abandon_24h"
TRUE_RATES = {"A": 0.10, "B": 0.15, "control": 0.07}


@dataclass(frozen=True)
class SimulatedRun:
    """What the engine would have written for the population, and the truth behind it."""

    actions: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    conversions: list[dict[str, Any]]
    true_rates: dict[str, float]


def simulate(customers: int = 40_000, seed: int = 7, rates: dict[str, float] | None = None,
             days: int = 21, window_ms: int = 7 * DAY_MS, coupon_share: float = 0.6,
             suppressed_share: float = 0.05) -> SimulatedRun:
    """One touch per customer over ``days``, orders by the arms' true ``rates``.

    >>> run = simulate(customers=300, seed=1)
    >>> {d.get("variant") for d in run.actions} == {"A", "B"}
    True
    >>> all(c["touch_ts_ms"] < c["ts_ms"] for c in run.conversions)
    True
    """
    rates = dict(TRUE_RATES if rates is None else rates)
    for arm in ("A", "B", "control"):
        p = rates.get(arm)
        if not isinstance(p, float) or not 0 <= p <= 1:
            raise ValueError(f"simulate: rates[{arm!r}] must be a probability, got {p!r}")
    rng = random.Random(seed)
    empty = Template.of({})
    action = Action("preferred", empty, variants=(Variant("A", 50, empty), Variant("B", 50, empty)),
                    control_share=0.1)
    actions: list[dict[str, Any]] = []
    audit: list[dict[str, Any]] = []
    conversions: list[dict[str, Any]] = []
    for i in range(customers):
        user = f"c-{i}"
        ts = START_MS + rng.randrange(days * DAY_MS)
        aid = f"a-sim-{seed}-{i}"
        arm = action.bucket(RULE_ID, user) or "A"
        doc: dict[str, Any] = {
            "action_id": aid, "rule_id": RULE_ID, "rule_version": "sim", "user_id": user,
            "variant": arm, "channel": None if arm == "control" else "push", "payload": {},
            "decided_at": iso(ts), "trigger_ts": iso(ts),
            "trigger_event_ids": [f"e-{i}"], "explain": {}}
        if arm != "control" and rng.random() < suppressed_share:
            # Suppressed after bucketing: audited with a reason, never a touch.
            doc["reason"] = rng.choice(["cap", "quiet_hours", "consent", "conflict"])
            audit.append(doc)
            continue
        if arm == "control":
            doc["reason"] = "control"
            audit.append(doc)
        else:
            doc["payload"] = {"template": "cart_reminder", "angle": "low_stock"} if arm == "A" \
                else {"template": "cart_reminder", "angle": "coupon", "coupon": "CART10"}
            actions.append(doc)
        ledger = new_ledger()
        record_touch(ledger, Touch.from_decision(doc, ts, window_ms))
        if rng.random() < rates[arm]:
            paid_ts = ts + 1 + rng.randrange(window_ms)
            amount = round(rng.uniform(20, 600), 2)
            coupon = "CART10" if arm == "B" and rng.random() < coupon_share else None
            order = f"o-{i}"
            conversions += on_order_paid(ledger, user, order, paid_ts, amount, coupon)
            if rng.random() < 0.02:   # the storefront sent it twice
                conversions += on_order_paid(ledger, user, order, paid_ts, amount, coupon)
            if rng.random() < 0.1:    # one item of the order sent back
                conversions += on_order_refunded(ledger, user, order, paid_ts + DAY_MS,
                                                 round(amount * 0.3, 2), f"e-r-{i}")
        if rng.random() < 0.05:       # an order long after the window: nobody's credit
            conversions += on_order_paid(ledger, user, f"o-late-{i}",
                                         ts + window_ms + 1 + rng.randrange(30 * DAY_MS), 99.0)
    return SimulatedRun(actions, audit, conversions, rates)
