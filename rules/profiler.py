"""Keeps each customer's profile up to date and says what changed.

The customer shard calls :meth:`Profiler.learn` for every event it applies
(preference scores, from within ``refresh``), :meth:`Profiler.refresh`
when the profile may have changed (an event that matters, a merge, or the
profile's own timer), and arms the one timer ``refresh`` asks for. It derives the
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
import re
from typing import Any

import orjson

from engage.events import EVENT_TYPES, Event
from engage.rules.context import Context
from engage.rules.decide import iso
from engage.rules.expr import EvalError
from engage.rules.model import Preferences, RuleSet, TagDef
from engage.state.customer import CustomerState, StateConfig
from engage.state.windows import DAY_MS
from engage.state.profile import (DORMANT, Facts, Population, ProfileConfig, changes, derive,
                                  next_change, rfm_values)

ORDER_TYPES = frozenset({"order_paid", "order_refunded"})
CART_TYPES = frozenset({"add_to_cart", "remove_from_cart", "order_placed", "order_paid"})
PROFILE_TYPES = frozenset({"profile_update", "register"})
#: Views kept per customer with the time each was entered.
_TRACKED = ("stage", "tier", "segment")   # refresh writes these out by name, in this order
#: Names a tag may read and the events that can change them, beyond ``<type>_<window>``.
_NAME_TYPES: dict[str, frozenset[str]] = {
    "orders": ORDER_TYPES, "lifetime_spend": ORDER_TYPES, "days_since_last_order": ORDER_TYPES,
    "days_since_first_order": ORDER_TYPES,
    "cart": CART_TYPES, "cart_items": CART_TYPES, "cart_value": CART_TYPES,
    "cart_categories": CART_TYPES,
    "region": PROFILE_TYPES, "timezone": PROFILE_TYPES, "preferred_channel": PROFILE_TYPES,
    "birthday": PROFILE_TYPES, "consent": frozenset({"consent_update"}),
}
_PREF_KINDS = ("likes:", "style:", "price:")
#: Every preference kind's prefix is this long: ``key[:6]`` is a key's kind.
_KIND_LEN = 6
assert all(len(k) == _KIND_LEN for k in _PREF_KINDS)
#: Category and style names that may become preference tags (and Redis set names).
_PLAIN = re.compile(r"[A-Za-z0-9_\-. ]{1,64}")
#: Names checked against :data:`_PLAIN` and the answer (a catalogue's
#: categories and styles repeat); emptied when it reaches this many.
_PLAIN_CACHE_SIZE = 4096
#: Preference scores are kept as they would stand at this event time (2020-01-01).
DECAY_EPOCH = 1_577_836_800_000
#: An empty SHA-256 to copy for each change id.
_SHA256 = hashlib.sha256()


def change_id(customer: str, kind: str, name: str, ts: int) -> str:
    """Deterministic id of a profile change (the same change on replay, the same id)."""
    digest = _SHA256.copy()   # a copy: cheaper than a new hash object (OpenSSL's set-up)
    digest.update(f"{customer}\x1f{kind}\x1f{name}\x1f{ts}".encode())
    return "p-" + digest.hexdigest()[:24]


class Profiler:
    """Derives profiles for one rule set (rebuilt, like the runner, on reload)."""

    def __init__(self, rules: RuleSet, cfg: StateConfig, pcfg: ProfileConfig) -> None:
        self.rules = rules
        self.cfg = cfg
        self.pcfg = pcfg
        self.tags = rules.tags
        self.prefs: Preferences | None = rules.preferences
        self.rank = {t.name: i for i, t in enumerate(pcfg.tiers)}
        #: The shard's live population, for relative RFM scores (set by the shard).
        self.population: Population | None = None
        self.weights = dict(self.prefs.weights) if self.prefs else {}
        counts = {w.name: w for w in cfg.counts.windows}
        spends = {w.name for w in cfg.spend.windows}
        self.count_windows: set[str] = set()
        self.spend_windows: set[str] = {pcfg.rfm_window}
        #: Tags to evaluate again after an event of a type; tags on every event.
        self.tags_after: dict[str, list[TagDef]] = {}
        self.tags_always: list[TagDef] = []
        #: Tags reading the stage, tier or segment: evaluated when one changes.
        self.tags_on_views: list[TagDef] = []
        #: Tags reading the models' scores: evaluated when a score changes.
        self.tags_on_scores: list[TagDef] = []
        #: Whether a tag reads a day count (days_since_*): the profile then
        #: wakes up whenever one of them turns over.
        self.daily = False
        self.tag_ids = frozenset(t.id for t in self.tags)
        for tag in self.tags:
            types: set[str] = set()
            always = views = scored = False
            for name in _reads(tag.when.tree):
                if name.startswith("days_since_"):
                    self.daily = True
                if name in _NAME_TYPES:
                    types |= _NAME_TYPES[name]
                elif name.startswith("spend_") and name[6:] in spends:
                    types |= ORDER_TYPES
                    self.spend_windows.add(name[6:])
                elif name in ("stage", "segment", "tier"):
                    views = True
                elif name in ("churn_risk", "repurchase_30d"):
                    scored = True   # the models refresh the profile when a score changes
                elif name == "user_id":
                    pass
                else:
                    etype, _, window = name.rpartition("_")
                    if etype and window in counts:
                        types.add(etype)
                        self.count_windows.add(window)
                    else:
                        always = True   # days_since_last_visit, or a name we cannot place
            if always:
                self.tags_always.append(tag)
            for etype in types:
                self.tags_after.setdefault(etype, []).append(tag)
            if views:
                self.tags_on_views.append(tag)
            if scored:
                self.tags_on_scores.append(tag)
        #: Event types after which the profile may change without time passing
        #: (others only move the last visit, which matters to a dormant customer).
        self.types = frozenset(set(ORDER_TYPES) | set(self.weights) | set(self.tags_after)
                               | (set(EVENT_TYPES) if self.tags_always else set()))
        self._exits = [(counts[w].granularity_ms, counts[w].buckets) for w in self.count_windows]
        p = self.prefs
        self._kinds = (("likes:", p.top_categories), ("style:", p.top_styles),
                       ("price:", 1)) if p is not None else ()
        self._room = sum(top + 1 for _, top in self._kinds)
        #: log2 of each weight, once (the same float every event would compute).
        self._log_weights = {t: math.log2(w) for t, w in self.weights.items() if w > 0}
        self._plain: dict[str, bool] = {}
        #: log2 of the minimum score, in stored (epoch) terms.
        self._fade_floor = math.log2(p.min_score) if p is not None else 0.0

    # ------------------------------------------------------------------ events
    def relevant(self, state: CustomerState, etype: str) -> bool:
        """Whether an event of ``etype`` may change ``state``'s profile.

        Any event is, for a customer with no profile timer armed (new, or taken
        over from an earlier deployment's document): it arms one.
        """
        if etype in self.types:
            return True
        derived = state.derived
        stage = derived.get("stage")
        return stage is None or stage[0] in DORMANT or "due" not in derived

    def learn(self, state: CustomerState, e: Event) -> set[str]:
        """Add a viewed, carted or bought item to the customer's preference scores;
        returns the keys it raised.

        Forward decay, in the log domain: a key stores ``log2`` of its score as
        it would stand at the fixed :data:`DECAY_EPOCH`, so an event adds to
        the keys it touches and never has to age the others; all scores fade
        alike, so they compare as stored, and the score at ``t`` is
        ``2 ** (stored - (t - epoch) / half_life)``.
        """
        p = self.prefs
        weight = self.weights.get(e.type)
        if p is None or weight is None or e.late or weight <= 0:
            return set()
        items = e.props.get("items") if e.type == "order_paid" else [e.props]
        if not isinstance(items, list):
            return set()
        touched: set[str] = set()
        plain = self._plain
        for item in items:
            if not isinstance(item, dict):
                continue
            # Names become tags and Redis set names: only plain ones qualify.
            category, style = item.get("category"), item.get("style")
            if isinstance(category, str):
                ok = plain.get(category)
                if ok or (ok is None and self._is_plain(category)):
                    touched.add("likes:" + category)
            if isinstance(style, str):
                ok = plain.get(style)
                if ok or (ok is None and self._is_plain(style)):
                    touched.add("style:" + style)
            price = item.get("price")
            if isinstance(price, (int, float)) and not isinstance(price, bool):
                touched.add("price:" + _band(float(price), p))
        if not touched:
            return touched
        scores: dict[str, float] = state.derived.setdefault("prefs", {})
        added = self._log_weights[e.type] + (e.ts - DECAY_EPOCH) / p.half_life_ms
        # A document's key order must not follow a hash seed: keys go in sorted.
        for key in (sorted(touched) if len(touched) > 1 else touched):
            _add_score(scores, key, added)
        self._prune(scores)
        return touched

    def merge_prefs(self, state: CustomerState, device: CustomerState) -> None:
        """Fold a device's preference scores (what it browsed before it was linked)
        into ``state``'s, as if the same items had been seen by the customer.

        Scores are kept as at the fixed epoch, so adding two of them needs no
        ageing: the sums are those of the events' scores, to the rounding of
        each side. The tags follow at the merge's own refresh.
        """
        theirs = device.derived.get("prefs")
        if self.prefs is None or not theirs:
            return
        scores: dict[str, float] = state.derived.setdefault("prefs", {})
        for key in sorted(theirs):
            _add_score(scores, key, theirs[key])
        self._prune(scores)

    def _prune(self, scores: dict[str, float]) -> None:
        """Keep room for the tags and one contender per kind.

        Log2 to 0.01: scores to within 0.7%; the rest would take half-lives of
        renewed interest to matter. A kind is over its room by an entry or a
        few: its weakest go (the lowest score, then the greatest key, as a full
        ranking would drop them) without sorting the kind.
        """
        if len(scores) > self._room:
            # One pass sorts the keys into their kinds (every kind's prefix is
            # _KIND_LEN long); only a kind over its room is looked at again.
            kinds: dict[str, list[tuple[float, str]]] = {}
            for k, v in scores.items():
                mine = kinds.get(k[:_KIND_LEN])
                if mine is None:
                    kinds[k[:_KIND_LEN]] = [(v, k)]
                else:
                    mine.append((v, k))
            for prefix, top in self._kinds:
                mine = kinds.get(prefix, [])
                while len(mine) > top + 1:
                    # The lowest score, of those the greatest key: one pass.
                    lowest, weakest = mine[0]
                    for v, k in mine:
                        if v < lowest or (v == lowest and k > weakest):
                            lowest, weakest = v, k
                    mine.remove((lowest, weakest))
                    del scores[weakest]

    def _is_plain(self, name: str) -> bool:
        """Whether ``name`` may become a tag (checked once per name, within a bounded cache)."""
        ok = _PLAIN.fullmatch(name) is not None
        if len(self._plain) >= _PLAIN_CACHE_SIZE:
            self._plain.clear()
        self._plain[name] = ok
        return ok

    # ------------------------------------------------------------------ profile
    def facts(self, state: CustomerState, as_of: int) -> Facts:
        """What :func:`~engage.state.profile.derive` needs, read from ``state`` at ``as_of``."""
        orders, spend = state.window_orders(self.cfg, self.pcfg.rfm_window, as_of)
        return Facts(as_of, state.max_ts, state.orders, state.first_order_ts,
                     state.last_order_ts, orders, spend)

    def refresh(self, state: CustomerState, as_of: int, cause: dict[str, Any],
                event: Event | None = None,
                rescored: bool = False) -> tuple[list[dict[str, Any]], int | None]:
        """Bring the profile to ``as_of``; returns the changes, and a time to arm the
        profile's timer at (None: the one armed still holds).

        ``event``: the event just applied that prompted it (None: time, or a
        merge), so that only what that event can change is derived again.
        ``rescored``: the models' scores changed, so predictive tags are due too.
        """
        etype = event.type if event is not None else None
        touched = self.learn(state, event) if event is not None else set()
        d = state.derived
        # _TRACKED's views, then the tags: written out, it costs no comprehension.
        stage, tier, segment = d.get("stage"), d.get("tier"), d.get("segment")
        before: dict[str, Any] = {"stage": stage[0] if stage is not None else None,
                                  "tier": tier[0] if tier is not None else None,
                                  "segment": segment[0] if segment is not None else None,
                                  "tags": d.get("tags", {})}
        armed = d.get("due")
        # An event at (or, in a replay's same batch, after) the armed moment
        # stands in for the timer: what was due then is derived now, in full.
        overdue = armed is None or armed <= as_of
        if overdue:
            etype = None
        full = etype is None or etype in ORDER_TYPES or before["stage"] is None \
            or before["stage"] in DORMANT
        views_changed = False
        if full:
            facts = self.facts(state, as_of)
            pop = self.population
            if pop is not None:
                # The customer's own values move within the population first.
                now = rfm_values(facts)
                was = d.get("pop")
                if (tuple(was) if was else None) != now:
                    pop.move(tuple(was) if was else None, now)
                    if now is None:
                        d.pop("pop", None)
                    else:
                        d["pop"] = list(now)
            view = derive(facts, self.pcfg, pop)
            for key in _TRACKED:
                if view[key] is None:
                    d.pop(key, None)
                elif before[key] != view[key]:
                    d[key] = [view[key], as_of]
                    views_changed = True
            # R, F and M themselves are not stored: they follow from the state at
            # any time (engage profile derives them), only the segment is news.
        tags = self._tags(state, as_of, etype if not (full and views_changed) else None,
                          views_changed, touched, rescored)
        old_tags: dict[str, int] = before["tags"]
        tags_changed = tags != old_tags.keys()
        if tags_changed:
            d["tags"] = {t: old_tags.get(t, as_of) for t in sorted(tags)}
            if not d["tags"]:
                del d["tags"]
        out: list[dict[str, Any]] = []
        if views_changed or tags_changed:
            after: dict[str, Any] = {k: (d[k][0] if k in d else None) for k in _TRACKED}
            after["tags"] = d.get("tags", {})
            out = changes(before, after, self.rank)
        for change in out:
            change["ts"] = as_of
            change["cause"] = cause
            change["change_id"] = change_id(state.key, change["kind"], str(change["name"]), as_of)
        if full or overdue:
            # Exact: supersedes whatever was armed.
            due = self.next_due(state, as_of)
            if due == armed:
                due = None
        else:
            assert etype is not None and armed is not None
            due = self._due_after_event(state, as_of, etype)
            if due is not None and due >= armed:
                due = None
        if due is not None:
            d["due"] = due
        return out, due

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
        candidates += self._fades(state)
        if self.daily:
            for since in (state.max_ts, state.last_order_ts, state.first_order_ts):
                if since is not None and since <= as_of:
                    candidates.append(since + ((as_of - since) // DAY_MS + 1) * DAY_MS)
        later = [t for t in candidates if t > as_of]
        return min(later) if later else None

    def _due_after_event(self, state: CustomerState, as_of: int, etype: str) -> int | None:
        """The earliest moment an event at ``as_of`` adds (every earlier one was armed).

        An event only adds later moments: its own bucket leaving the windows,
        its preference scores fading. What was due before is due no later.
        """
        # The earliest candidate after as_of, in one pass (no lists to build).
        best: int | None = None
        for gran, buckets in self._exits:
            t = (as_of // gran + buckets) * gran
            if t > as_of and (best is None or t < best):
                best = t
        if etype in self.weights:
            for t in self._fades(state):
                if t > as_of and (best is None or t < best):
                    best = t
        return best

    def _fades(self, state: CustomerState) -> list[int]:
        """When each preference tag held falls below the minimum score."""
        p = self.prefs
        scores = state.derived.get("prefs")
        if p is None or not scores:
            return []
        floor = self._fade_floor
        return [DECAY_EPOCH + int((scores[tag] - floor) * p.half_life_ms) + 1
                for tag in state.derived.get("tags", ()) if tag in scores]

    def _tags(self, state: CustomerState, as_of: int, etype: str | None, views_changed: bool,
              touched: set[str], rescored: bool = False) -> set[str]:
        """The tags that hold at ``as_of``: those ``etype`` can change evaluated
        again (all of them for ``None``), the others as they were.

        Preference tags are ranked again only when a score the event raised
        could enter its kind's top (all scores fade alike, so nothing else
        reorders them); fading out is the profile timer's business.
        """
        p = self.prefs
        # Tags no longer defined (a reload removed them) are dropped.
        held = {t for t in state.derived.get("tags", ())
                if t in self.tag_ids or (p is not None and t.startswith(_PREF_KINDS))}
        if etype is None:
            todo = list(self.tags)
        else:
            todo = self.tags_after.get(etype, []) + self.tags_always
            if views_changed:
                todo += self.tags_on_views
            if rescored:
                todo += self.tags_on_scores
        if todo:
            # Tags explain nothing: names are read without the explanation record.
            get = Context(state, self.cfg, as_of).read
            for tag in todo:
                try:
                    holds = tag.when.test(get)
                except (EvalError, ValueError, TypeError, KeyError):
                    holds = False   # a field the customer lacks: the tag does not hold
                if holds:
                    held.add(tag.id)
                else:
                    held.discard(tag.id)
        scores = state.derived.get("prefs")
        if p is None or not scores:
            return held
        # log2 of the minimum, in stored (epoch) terms, at as_of.
        floor = math.log2(p.min_score) + (as_of - DECAY_EPOCH) / p.half_life_ms
        if etype is not None:
            # The kinds where a raised score not yet a tag now clears the minimum.
            rising = {k[:k.index(":") + 1] for k in touched
                      if k not in held and scores.get(k, floor - 1) >= floor}
            if not rising:
                return held
        for prefix, top in self._kinds:
            if etype is not None and prefix not in rising:
                continue
            # Highest score first, then the smaller key: sorting (-score, key)
            # pairs gives that order without a key function.
            ranked = sorted([(-v, k) for k, v in scores.items()
                             if v >= floor and k.startswith(prefix)])
            held = {t for t in held if not t.startswith(prefix)}
            held.update(k for _, k in ranked[:top])
        return held


def _add_score(scores: dict[str, float], key: str, added: float) -> None:
    """Add a score (log2, as at the epoch) to ``key``'s: log2(2**old + 2**added)."""
    old = scores.get(key)
    if old is None:
        scores[key] = round(added, 2)
    else:
        high, low = (old, added) if old > added else (added, old)
        scores[key] = round(high + math.log2(1.0 + 2.0 ** (low - high)), 2)


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


def _band(price: float, p: Preferences) -> str:
    band = p.price_bands[0][0]
    for name, low in p.price_bands:
        if price >= low:
            band = name
    return band
