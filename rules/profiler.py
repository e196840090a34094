"""Keeps each customer's profile up to date and says what changed.

The customer shard calls :meth:`Profiler.learn` for every event it applies
(preference scores), :meth:`Profiler.update` when the profile may have
changed (an event that matters, a merge, or the profile's own timer), and
arms the one timer :meth:`Profiler.update` asks for. ``update`` derives the
stage, tier and RFM of :mod:`engage.state.profile`, evaluates the tag
definitions of the rule files, stores the result in ``state.derived`` and
returns every transition as a change record: the change stream's message and
what the rules' transition triggers take (``RuleRunner.on_change``).

Event time only: the same events give the same profile and the same changes
at the same event times, live or replayed.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import orjson

from engage.events import Event
from engage.rules.context import Context
from engage.rules.decide import iso
from engage.rules.expr import EvalError
from engage.rules.model import Preferences, RuleSet
from engage.state.customer import CustomerState, StateConfig
from engage.state.profile import DORMANT, Facts, ProfileConfig, changes, derive, next_change

ORDER_TYPES = frozenset({"order_paid", "order_refunded"})
CART_TYPES = frozenset({"add_to_cart", "remove_from_cart", "order_placed", "order_paid"})
PROFILE_TYPES = frozenset({"profile_update", "register"})
#: Views kept per customer with the time each was entered.
_TRACKED = ("stage", "tier", "segment")
#: Names a tag may read and the events that can change them, beyond ``<type>_<window>``.
_NAME_TYPES: dict[str, frozenset[str]] = {
    "orders": ORDER_TYPES, "lifetime_spend": ORDER_TYPES, "days_since_last_order": ORDER_TYPES,
    "days_since_first_order": ORDER_TYPES,
    "cart": CART_TYPES, "cart_items": CART_TYPES, "cart_value": CART_TYPES,
    "cart_categories": CART_TYPES,
    "region": PROFILE_TYPES, "timezone": PROFILE_TYPES, "preferred_channel": PROFILE_TYPES,
    "birthday": PROFILE_TYPES, "consent": frozenset({"consent_update"}),
}
#: Scores below min_score / this are forgotten: they would take three
#: half-lives of renewed interest to matter again.
_FORGET_BELOW = 8.0


def change_id(customer: str, kind: str, name: str, ts: int) -> str:
    """Deterministic id of a profile change (the same change on replay, the same id)."""
    digest = hashlib.sha256(f"{customer}\x1f{kind}\x1f{name}\x1f{ts}".encode()).hexdigest()
    return "p-" + digest[:24]


class Profiler:
    """Derives profiles for one rule set (rebuilt, like the runner, on reload)."""

    def __init__(self, rules: RuleSet, cfg: StateConfig, pcfg: ProfileConfig) -> None:
        self.rules = rules
        self.cfg = cfg
        self.pcfg = pcfg
        self.tags = rules.tags
        self.prefs: Preferences | None = rules.preferences
        self.rank = {t.name: i for i, t in enumerate(pcfg.tiers)}
        self.weights = dict(self.prefs.weights) if self.prefs else {}
        types: set[str] = set(ORDER_TYPES) | set(self.weights)
        self.every_event = False
        self.count_windows: set[str] = set()
        self.spend_windows: set[str] = {pcfg.rfm_window}
        counts = {w.name for w in cfg.counts.windows}
        spends = {w.name for w in cfg.spend.windows}
        for tag in self.tags:
            for name in _reads(tag.when.tree):
                if name in _NAME_TYPES:
                    types |= _NAME_TYPES[name]
                elif name.startswith("spend_") and name[6:] in spends:
                    types |= ORDER_TYPES
                    self.spend_windows.add(name[6:])
                elif name in ("stage", "segment", "tier", "churn_risk", "repurchase_30d",
                              "user_id"):
                    pass   # derived in the same update, or written by the models
                elif name == "days_since_last_visit":
                    self.every_event = True
                else:
                    etype, _, window = name.rpartition("_")
                    if etype and window in counts:
                        types.add(etype)
                        self.count_windows.add(window)
                    else:
                        self.every_event = True   # a function call or a name we cannot place
        #: Event types after which the profile may change (others only move the
        #: last visit, which matters to a dormant customer: see :meth:`relevant`).
        self.types = frozenset(types)

    # ------------------------------------------------------------------ events
    def relevant(self, state: CustomerState, etype: str) -> bool:
        """Whether an event of ``etype`` may change ``state``'s profile."""
        if self.every_event or etype in self.types:
            return True
        stage = state.derived.get("stage")
        return stage is None or stage[0] in DORMANT

    def learn(self, state: CustomerState, e: Event) -> None:
        """Add a viewed, carted or bought item to the customer's preference scores."""
        p = self.prefs
        if p is None or e.late:
            return
        weight = self.weights.get(e.type)
        if weight is None:
            return
        items = e.props.get("items") if e.type == "order_paid" else [e.props]
        if not isinstance(items, list):
            return
        scores: dict[str, list[float]] = state.derived.setdefault("prefs", {})
        for item in items:
            if not isinstance(item, dict):
                continue
            keys = []
            if isinstance(item.get("category"), str):
                keys.append("likes:" + item["category"])
            if isinstance(item.get("style"), str):
                keys.append("style:" + item["style"])
            price = item.get("price")
            if isinstance(price, (int, float)) and not isinstance(price, bool):
                keys.append("price:" + _band(float(price), p))
            for key in keys:
                entry = scores.get(key)
                value = weight if entry is None else _decayed(entry, e.ts, p) + weight
                scores[key] = [round(value, 4), e.ts]
        floor = p.min_score / _FORGET_BELOW
        for key in [k for k, v in scores.items() if _decayed(v, e.ts, p) < floor]:
            del scores[key]

    # ------------------------------------------------------------------ profile
    def facts(self, state: CustomerState, as_of: int) -> Facts:
        """What :func:`~engage.state.profile.derive` needs, read from ``state`` at ``as_of``."""
        orders, spend = state.window_orders(self.cfg, self.pcfg.rfm_window, as_of)
        return Facts(as_of, state.max_ts, state.orders, state.first_order_ts,
                     state.last_order_ts, orders, spend)

    def update(self, state: CustomerState, as_of: int, cause: dict[str, Any]) -> list[dict[str, Any]]:
        """Derive the profile at ``as_of``, store it, and return the changes (with ids)."""
        f = self.facts(state, as_of)
        view = derive(f, self.pcfg)
        d = state.derived
        before: dict[str, Any] = {k: (d[k][0] if k in d else None) for k in _TRACKED}
        before["tags"] = d.get("tags", {})
        for key in _TRACKED:
            if view[key] is None:
                d.pop(key, None)
            elif before[key] != view[key]:
                d[key] = [view[key], as_of]
        if view["rfm"] is None:
            d.pop("rfm", None)
        else:
            d["rfm"] = view["rfm"]
        tags = self._tags(state, as_of)
        old_tags: dict[str, int] = before["tags"]
        d["tags"] = {t: old_tags.get(t, as_of) for t in tags}
        if not d["tags"]:
            del d["tags"]
        after: dict[str, Any] = {k: view[k] for k in _TRACKED}
        after["tags"] = d.get("tags", {})
        out = changes(before, after, self.rank)
        for change in out:
            change["ts"] = as_of
            change["cause"] = cause
            change["change_id"] = change_id(state.key, change["kind"], str(change["name"]), as_of)
        return out

    def message(self, customer: str, change: dict[str, Any]) -> bytes:
        """The change as published on ``engage.profile_changes`` (contract-style JSON)."""
        doc = {"change_id": change["change_id"], "user_id": customer, "kind": change["kind"],
               "name": change["name"], "from": change["from"], "to": change["to"],
               "ts": iso(change["ts"]), "cause": change["cause"]}
        if change.get("reactivated"):
            doc["reactivated"] = True
        return orjson.dumps(doc)

    def next_due(self, state: CustomerState, as_of: int) -> int | None:
        """When time alone may next change ``state``'s profile (after ``as_of``)."""
        f = self.facts(state, as_of)
        candidates = []
        due = next_change(f, self.pcfg, state.window_exit(self.cfg, self.pcfg.rfm_window, as_of))
        if due is not None:
            candidates.append(due)
        for window in self.spend_windows:
            exit_at = state.window_exit(self.cfg, window, as_of)
            if exit_at is not None:
                candidates.append(exit_at)
        for window in self.count_windows:
            exit_at = self.cfg.counts.next_exit(state.counts, window, as_of)
            if exit_at is not None:
                candidates.append(exit_at)
        p = self.prefs
        if p is not None:
            for tag in state.derived.get("tags", {}):
                entry = state.derived.get("prefs", {}).get(tag)
                if entry is not None and entry[0] > 0:
                    # When the decayed score falls below the minimum.
                    fades = entry[1] + int(p.half_life_ms * math.log2(entry[0] / p.min_score)) + 1
                    candidates.append(fades)
        later = [t for t in candidates if t > as_of]
        return min(later) if later else None

    def _tags(self, state: CustomerState, as_of: int) -> list[str]:
        """The tags that hold at ``as_of``: defined ones, then preferences."""
        out: list[str] = []
        if self.tags:
            ctx = Context(state, self.cfg, as_of)
            for tag in self.tags:
                try:
                    if tag.when.evaluate(ctx.get):
                        out.append(tag.id)
                except (EvalError, ValueError, TypeError, KeyError):
                    continue   # a field the customer lacks: the tag does not hold
        p = self.prefs
        scores = state.derived.get("prefs")
        if p is not None and scores:
            live = {k: _decayed(v, as_of, p) for k, v in scores.items()}
            for prefix, top in (("likes:", p.top_categories), ("style:", p.top_styles),
                                ("price:", 1)):
                ranked = sorted(((s, k) for k, s in live.items()
                                 if k.startswith(prefix) and s >= p.min_score),
                                key=lambda x: (-x[0], x[1]))
                out.extend(k for _, k in ranked[:top])
        return out


def _reads(tree: Any) -> list[str]:
    """The customer fields a condition reads, calls written as the field they read:
    ``count('product_view', '7d', 'sofa')`` reads ``product_view_7d``."""
    out: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if node.op == "name":
            out.append(node.value)
        elif node.op == "call" and node.value == "count" and len(node.args) >= 2 and all(
                a.op == "lit" and isinstance(a.value, str) for a in node.args[:2]):
            out.append(f"{node.args[0].value}_{node.args[1].value}")
            continue
        elif node.op == "call" and node.value == "consented":
            out.append("consent")
        stack.extend(node.args)
    return out


def _decayed(entry: list[float], ts: int, p: Preferences) -> float:
    """A score ``[value, at]`` as it stands at ``ts`` (halved every half-life)."""
    age = ts - entry[1]
    return entry[0] * 0.5 ** (age / p.half_life_ms) if age > 0 else entry[0]


def _band(price: float, p: Preferences) -> str:
    band = p.price_bands[0][0]
    for name, low in p.price_bands:
        if price >= low:
            band = name
    return band
