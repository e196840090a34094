"""The customer profile derived from state: lifecycle stage, member tier, RFM and segment.

Pure logic, event time only. :func:`derive` reads a customer's state as of
an event time and answers what the profile says then; :func:`changes`
compares two answers and names every transition (stage entered, tier up or
down, segment entered, tag added or removed) in the form the change stream
and the rules' transition triggers take. :func:`next_change` says when time
alone, with no new event, could change the answer: the customer shard arms
one timer there, so a customer who goes quiet still becomes ``declining``
at exactly the event time a replay would say.

Definitions (all configurable, defaults from the domain page):

- **last visit**: the customer's latest event of any type;
- **stage**: ``lost`` after ``lost_after`` (90 d) without a visit,
  ``declining`` after ``declining_after`` (30 d); otherwise ``prospect``
  (never bought), ``new`` (first order within ``new_for``, 30 d) or
  ``active``. A visit after ``declining``/``lost`` is a re-activation;
- **R, F, M**: days since the last order; orders and spend (paid minus
  refunded) in the ``rfm_window`` (365 d, a spend window, sliding by the
  day); a customer who never ordered has none;
- **scores** 1-5 against thresholds (R: days at most; F, M: at least), or
  (``rfm_scoring: population``) as quintiles among the live customers of the
  shard (:class:`Population`); ``high`` from ``high_from`` (3) on; the eight
  high/low combinations are the segments, named as the business names them;
- **tier**: the highest whose minimum spend *and* order count in the RFM
  window the customer meets.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from engage.state.windows import DAY_MS, parse_duration

#: (R high, F high, M high) -> segment. The first four are the domain page's
#: names; the other four follow the usual eight-way RFM naming.
SEGMENTS: dict[tuple[bool, bool, bool], str] = {
    (True, True, True): "core_value",
    (True, True, False): "active_potential",
    (False, True, True): "sleeping_high_value",
    (False, False, False): "lost",
    (True, False, True): "develop_high_value",
    (False, False, True): "win_back_high_value",
    (True, False, False): "develop_new",
    (False, True, False): "retain_regular",
}
STAGES = ("prospect", "new", "active", "declining", "lost")
#: Stages a visit takes the customer out of: that transition is a re-activation.
DORMANT = ("declining", "lost")


@dataclass(frozen=True)
class Tier:
    """A member tier and what it takes, in the RFM window."""

    name: str
    min_spend: float = 0.0
    min_orders: int = 0


@dataclass(frozen=True)
class ProfileConfig:
    """Thresholds of stages, scores and tiers; built once from configuration.

    >>> ProfileConfig().tiers[-1].name
    'gold'
    """

    new_for_ms: int = 30 * DAY_MS
    declining_after_ms: int = 30 * DAY_MS
    lost_after_ms: int = 90 * DAY_MS
    rfm_window: str = "365d"
    #: R scores 5..2 for at most this many days since the last order; 1 beyond.
    recency_days: tuple[int, ...] = (30, 90, 180, 365)
    #: F and M score 2..5 from each threshold on; 1 below the first.
    frequency: tuple[int, ...] = (2, 3, 4, 6)
    monetary: tuple[float, ...] = (200.0, 500.0, 1000.0, 3000.0)
    high_from: int = 3
    #: "thresholds" (above) or "population": quintiles among the shard's customers.
    rfm_scoring: str = "thresholds"
    tiers: tuple[Tier, ...] = field(default_factory=lambda: (
        Tier("regular"), Tier("silver", 1000.0, 2), Tier("gold", 5000.0, 4)))

    @staticmethod
    def from_settings(new_for: str, declining_after: str, lost_after: str,
                      tiers: list[str], recency_days: list[str] | None = None,
                      frequency: list[str] | None = None,
                      monetary: list[str] | None = None,
                      rfm_scoring: str = "thresholds") -> "ProfileConfig":
        """From duration strings, tiers written ``name:min_spend:min_orders`` and
        four ascending score thresholds each for R (days), F (orders), M (spend)."""
        default = ProfileConfig()
        scores = {}
        for name, raw, kind in (("recency_days", recency_days, int), ("frequency", frequency, int),
                                ("monetary", monetary, float)):
            if raw is None:
                scores[name] = getattr(default, name)
                continue
            try:
                values = tuple(kind(v) for v in raw)
            except ValueError:
                raise ValueError(f"rfm_{name}: {','.join(raw)!r} must be numbers") from None
            if len(values) != 4 or list(values) != sorted(set(values)):
                raise ValueError(f"rfm_{name}: give four ascending thresholds (scores 2 to 5), "
                                 f"e.g. {','.join(str(v) for v in getattr(default, name))}")
            scores[name] = values
        parsed = []
        for text in tiers:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError(f"tier {text!r}: write name:min_spend:min_orders, e.g. silver:1000:2")
            try:
                parsed.append(Tier(parts[0], float(parts[1]), int(parts[2])))
            except ValueError:
                raise ValueError(f"tier {text!r}: min_spend and min_orders must be numbers") from None
        if not parsed or parsed[0].min_spend or parsed[0].min_orders:
            raise ValueError("the first tier must ask nothing (e.g. regular:0:0)")
        for lower, higher in zip(parsed, parsed[1:]):
            if higher.min_spend < lower.min_spend or higher.min_orders < lower.min_orders:
                raise ValueError(f"tier {higher.name!r} asks less than {lower.name!r} before it: "
                                 "list tiers lowest first")
        for t in parsed:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", t.name):
                raise ValueError(f"tier name {t.name!r}: lower case letters, digits and '_'")
        if rfm_scoring not in ("thresholds", "population"):
            raise ValueError(f"rfm_scoring: {rfm_scoring!r} is not thresholds or population")
        return ProfileConfig(parse_duration(new_for), parse_duration(declining_after),
                             parse_duration(lost_after), tiers=tuple(parsed),
                             rfm_scoring=rfm_scoring, **scores)


@dataclass(frozen=True)
class Facts:
    """What the profile is derived from, as of one event time (see :func:`facts`)."""

    as_of: int
    last_visit: int
    orders: int               # lifetime
    first_order: int | None
    last_order: int | None
    window_orders: float      # in the RFM window
    window_spend: float


def score_low(value: float, most: tuple[int, ...]) -> int:
    """5 for values at most the first threshold, down to 1 beyond the last.

    >>> [score_low(d, (30, 90, 180, 365)) for d in (0, 30, 31, 365, 366)]
    [5, 5, 4, 2, 1]
    """
    for i, limit in enumerate(most):
        if value <= limit:
            return 5 - i
    return 1


def score_high(value: float, least: tuple[float, ...] | tuple[int, ...]) -> int:
    """1 below the first threshold, up to 5 from the last on.

    >>> [score_high(n, (2, 3, 4, 6)) for n in (0, 1, 2, 5, 6)]
    [1, 1, 2, 4, 5]
    """
    return 1 + sum(1 for limit in least if value >= limit)


class Population:
    """The live distribution of R, F and M over a shard's customers, for relative scores.

    A histogram per measure (a streaming quantile sketch that, unlike KLL or
    t-digest, takes deletions: a customer's old values leave when new ones
    come): recency by the day of the last order, frequency exactly, spend in
    buckets 2% wide (DDSketch's idea). A score is the customer's quintile:
    ``1 + floor(5 * q)`` where ``q`` is the share of customers ranked below
    (ties count half), capped at 5.

    >>> pop = Population()
    >>> for i in range(10):
    ...     pop.move(None, (i, i, float(100 * i)))
    >>> pop.scores((9, 9, 900.0)), pop.scores((0, 0, 0.0))
    ((5, 5, 5), (1, 1, 1))
    """

    def __init__(self) -> None:
        self.counts: tuple[dict[int, int], dict[int, int], dict[int, int]] = ({}, {}, {})
        self.total = 0

    @staticmethod
    def key(values: tuple[int, int, float]) -> tuple[int, int, int]:
        """Histogram buckets of (last order day, orders, spend)."""
        day, orders, spend = values
        return day, orders, int(math.log(1.0 + max(spend, 0.0)) / _LOG_STEP)

    def move(self, old: tuple[int, int, float] | None, new: tuple[int, int, float] | None) -> None:
        """A customer's values changed from ``old`` to ``new`` (None: absent)."""
        for values, step in ((old, -1), (new, 1)):
            if values is None:
                continue
            self.total += step
            for hist, bucket in zip(self.counts, self.key(values)):
                n = hist.get(bucket, 0) + step
                if n:
                    hist[bucket] = n
                else:
                    hist.pop(bucket, None)

    def scores(self, values: tuple[int, int, float]) -> tuple[int, int, int]:
        """R, F and M quintile scores of ``values`` in this population."""
        if self.total <= 0:
            return 3, 3, 3
        out = []
        for hist, bucket in zip(self.counts, self.key(values)):
            below = sum(n for b, n in hist.items() if b < bucket)
            q = (below + hist.get(bucket, 0) / 2) / self.total
            out.append(min(5, 1 + int(q * 5)))
        return out[0], out[1], out[2]


_LOG_STEP = math.log(1.02)


def derive(f: Facts, cfg: ProfileConfig, population: Population | None = None) -> dict[str, Any]:
    """Stage, tier, R/F/M values and scores and segment as of ``f.as_of``.

    With a ``population``, scores are quintiles in it instead of thresholds.

    >>> cfg = ProfileConfig()
    >>> f = Facts(as_of=40 * DAY_MS, last_visit=5 * DAY_MS, orders=3, first_order=DAY_MS,
    ...           last_order=5 * DAY_MS, window_orders=3, window_spend=1200.0)
    >>> d = derive(f, cfg)
    >>> d["stage"], d["tier"], d["rfm"], d["segment"]
    ('declining', 'silver', [35, 3, 1200.0, 4, 3, 4], 'core_value')
    """
    idle = f.as_of - f.last_visit
    if idle >= cfg.lost_after_ms:
        stage = "lost"
    elif idle >= cfg.declining_after_ms:
        stage = "declining"
    elif f.orders <= 0 or f.first_order is None:
        stage = "prospect"
    elif f.as_of - f.first_order < cfg.new_for_ms:
        stage = "new"
    else:
        stage = "active"
    tier = cfg.tiers[0].name
    for t in cfg.tiers:
        if f.window_spend >= t.min_spend and f.window_orders >= t.min_orders:
            tier = t.name
    out: dict[str, Any] = {"stage": stage, "tier": tier, "rfm": None, "segment": None}
    if f.last_order is not None:
        days = (f.as_of - f.last_order) // DAY_MS
        money = round(f.window_spend, 2)
        values = rfm_values(f)
        if population is not None and values is not None:
            r, fs, m = population.scores(values)
        else:
            r = score_low(days, cfg.recency_days)
            fs = score_high(f.window_orders, cfg.frequency)
            m = score_high(money, cfg.monetary)
        out["rfm"] = [days, int(f.window_orders), money, r, fs, m]
        out["segment"] = SEGMENTS[(r >= cfg.high_from, fs >= cfg.high_from, m >= cfg.high_from)]
    return out


def rfm_values(f: Facts) -> tuple[int, int, float] | None:
    """What a customer contributes to a :class:`Population`: last order day, orders, spend."""
    if f.last_order is None:
        return None
    return f.last_order // DAY_MS, int(f.window_orders), round(f.window_spend, 2)


def next_change(f: Facts, cfg: ProfileConfig, window_exits: int | None) -> int | None:
    """The earliest event time after ``f.as_of`` at which time alone may change
    :func:`derive`'s answer; ``window_exits``: when the oldest order leaves the
    RFM window (None: none in it).

    >>> cfg = ProfileConfig()
    >>> f = Facts(0, 0, 0, None, None, 0, 0.0)
    >>> next_change(f, cfg, None) == cfg.declining_after_ms
    True
    """
    candidates = [f.last_visit + cfg.declining_after_ms, f.last_visit + cfg.lost_after_ms]
    if f.first_order is not None:
        candidates.append(f.first_order + cfg.new_for_ms)
    if f.last_order is not None:
        # The score moves when whole days since the order pass a threshold.
        candidates += [f.last_order + (days + 1) * DAY_MS for days in cfg.recency_days]
    if window_exits is not None:
        candidates.append(window_exits)
    later = [t for t in candidates if t > f.as_of]
    return min(later) if later else None


def changes(before: dict[str, Any], after: dict[str, Any], tier_rank: dict[str, int]) -> list[
        dict[str, Any]]:
    """The transitions from ``before`` to ``after`` (both :func:`derive` answers plus ``tags``).

    >>> changes({"stage": "lost", "tier": "gold", "segment": None, "tags": {"a": 1}},
    ...         {"stage": "active", "tier": "silver", "segment": "core_value", "tags": {"b": 2}},
    ...         {"regular": 0, "silver": 1, "gold": 2})  # doctest: +NORMALIZE_WHITESPACE
    [{'kind': 'stage_entered', 'name': 'active', 'from': 'lost', 'to': 'active', 'reactivated': True},
     {'kind': 'tier_downgraded', 'name': 'silver', 'from': 'gold', 'to': 'silver'},
     {'kind': 'segment_entered', 'name': 'core_value', 'from': None, 'to': 'core_value'},
     {'kind': 'tag_removed', 'name': 'a', 'from': True, 'to': False},
     {'kind': 'tag_added', 'name': 'b', 'from': False, 'to': True}]
    """
    out: list[dict[str, Any]] = []
    old, new = before.get("stage"), after.get("stage")
    if old != new and new is not None:
        change: dict[str, Any] = {"kind": "stage_entered", "name": new, "from": old, "to": new}
        if old in DORMANT and new not in DORMANT:
            change["reactivated"] = True
        out.append(change)
    old, new = before.get("tier"), after.get("tier")
    # Everyone starts in the base tier: joining it is no news.
    if old != new and new is not None and (old is not None or tier_rank.get(new, 0) > 0):
        kind = "tier_upgraded" if tier_rank.get(new, 0) > tier_rank.get(old or "", -1) \
            else "tier_downgraded"
        out.append({"kind": kind, "name": new, "from": old, "to": new})
    old, new = before.get("segment"), after.get("segment")
    if old != new and new is not None:
        out.append({"kind": "segment_entered", "name": new, "from": old, "to": new})
    old_tags, new_tags = before.get("tags") or {}, after.get("tags") or {}
    for tag in sorted(set(old_tags) - set(new_tags)):
        out.append({"kind": "tag_removed", "name": tag, "from": True, "to": False})
    for tag in sorted(set(new_tags) - set(old_tags)):
        out.append({"kind": "tag_added", "name": tag, "from": False, "to": True})
    return out


def memberships(derived: dict[str, Any]) -> str:
    """The membership sets a customer with this profile belongs to, as one string.

    >>> memberships({"stage": ["active", 1], "tier": ["gold", 2], "tags": {"vip": 3}})
    'stage:active\\x1ftag:vip\\x1ftier:gold'
    """
    names = [f"{view}:{derived[view][0]}" for view in ("stage", "tier", "segment") if view in derived]
    names += [f"tag:{tag}" for tag in derived.get("tags", ())]
    return "\x1f".join(sorted(names))
