"""What a model sees of a customer at one moment of event time.

Every feature is read from the customer's state *as of* the prediction point
``t``: windows at the bucket of ``t``, order dates up to ``t``. The shards
apply events strictly in event-time order, so nothing after ``t`` is in the
state when it is read; the label (what happened after ``t``) is looked at
only once the horizon has passed (see :mod:`engage.models.keeper`).

Counts, money and ratios enter as ``log1p``: a few customers with hundreds
of views or a 20,000 sofa order would otherwise dominate a linear model's
gradient. Day counts stay linear: log days measured worse (eval-churn).
"""

from __future__ import annotations

import math

from engage.state.customer import CustomerState, StateConfig

DAY_MS = 86_400_000
#: Days used for "never" (no order yet): far enough to read as "long ago",
#: close enough not to swamp the scaler.
NEVER_DAYS = 730.0

FEATURE_NAMES: tuple[str, ...] = (
    "days_since_last_visit", "days_since_last_order", "has_ordered", "orders_365d",
    "spend_365d", "orders_lifetime", "spend_lifetime", "days_since_first_order",
    "mean_days_between_orders", "overdue", "slowing", "visits_7d", "visits_30d", "cart_items",
)
#: Gap assumed between orders until a customer has two (for ``overdue``).
PRIOR_GAP_DAYS = 60.0
#: Event types that count as the customer's own activity in ``visits_*``.
_VISIT_TYPES = ("page_view", "product_view", "order_paid")


def _count(state: CustomerState, cfg: StateConfig, etype: str, window: str, t: int) -> float:
    try:
        return state.count(cfg, etype, window, t)
    except KeyError:
        return 0.0   # a deployment configured without this window


def last_visit_at(state: CustomerState, t: int) -> int | None:
    """The customer's latest event at or before ``t`` (any type), or None.

    From ``last_seen`` (exact per type), not ``max_ts``, which moves once per hour.
    """
    seen = [ts for ts in state.last_seen.values() if ts <= t]
    # An order applied ahead of t (late in its partition) hides the one before it
    # in last_seen; the recent orders keep every time.
    seen += [ts for ts in state.recent_orders.values() if ts <= t]
    return max(seen) if seen else None


def features(state: CustomerState, cfg: StateConfig, t: int, rfm_window: str = "365d") -> list[float]:
    """The feature vector of ``state`` at event time ``t``, in :data:`FEATURE_NAMES` order.

    >>> from engage.events import Event
    >>> cfg = StateConfig.default()
    >>> s = CustomerState("c-1", cfg)
    >>> s.apply(Event("e1", "order_paid", 0, "c-1", None, "web",
    ...                {"order_id": "o1", "amount": 99.0}), cfg)
    >>> dict(zip(FEATURE_NAMES, features(s, cfg, 3 * DAY_MS)))["days_since_last_order"]
    3.0
    """
    last_visit = last_visit_at(state, t)
    # Orders as of t. In-order events after t are not applied yet, but an order late
    # in its own partition is applied on arrival and may still lie after t when
    # another partition lags: the recent orders' times say which to leave out
    # (lifetime spend cannot: amounts are not kept per order, so it may hold one).
    times = sorted(ts for ts in state.recent_orders.values() if ts <= t)
    later = sum(1 for ts in state.recent_orders.values() if ts > t)
    if times:
        last_order: int | None = times[-1]
    else:
        last_order = state.last_order_ts if state.last_order_ts is not None \
            and state.last_order_ts <= t else None
    first_order = state.first_order_ts if state.first_order_ts is not None \
        and state.first_order_ts <= t else None
    try:
        orders_w, spend_w = state.window_orders(cfg, rfm_window, t)
    except KeyError:
        orders_w, spend_w = 0.0, 0.0
    orders = state.orders - later
    gap = NEVER_DAYS
    if first_order is not None and last_order is not None and orders > 1:
        gap = (last_order - first_order) / DAY_MS / (orders - 1)
    since_order = (t - last_order) / DAY_MS if last_order is not None else NEVER_DAYS
    # How late the next order is against the customer's own rhythm: a fading
    # customer's gaps outgrow their habit before plain recency looks alarming.
    overdue = since_order / max(gap if orders > 1 else PRIOR_GAP_DAYS, 1.0)
    cart = state.cart.lines(t)
    visits_7d = sum(_count(state, cfg, v, "7d", t) for v in _VISIT_TYPES)
    visits_30d = sum(_count(state, cfg, v, "30d", t) for v in _VISIT_TYPES)
    since_visit = (t - last_visit) / DAY_MS if last_visit is not None else NEVER_DAYS
    # The latest gap against the customer's usual one: above 1, they are slowing down.
    slowing = ((times[-1] - times[-2]) / DAY_MS / max(gap, 1.0)) if len(times) >= 2 and \
        orders > 1 else 1.0
    return [
        since_visit,
        since_order,
        1.0 if last_order is not None else 0.0,
        math.log1p(max(orders_w, 0.0)),
        math.log1p(max(spend_w, 0.0)),
        math.log1p(orders),
        math.log1p(max(state.spend_total / 100, 0.0)),
        (t - first_order) / DAY_MS if first_order is not None else 0.0,
        gap,
        math.log1p(overdue),
        math.log1p(slowing),
        math.log1p(visits_7d),
        math.log1p(visits_30d),
        float(sum(line[0] for line in cart.values())),
    ]


def as_dict(vector: list[float]) -> dict[str, float]:
    """The vector as river wants it: feature name -> value."""
    return dict(zip(FEATURE_NAMES, vector))
