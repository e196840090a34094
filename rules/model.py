"""Rules and the contact policy as typed, immutable objects.

The loader (:mod:`engage.rules.loader`) builds these from YAML and refuses
anything it cannot build; code that decides and sends only ever sees a
valid :class:`RuleSet`. Every type here is one business concept with the
business's name for it.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any, Union

import orjson

from engage.rules.expr import Condition
from engage.rules.templates import Template


# ---------------------------------------------------------------- triggers
@dataclass(frozen=True)
class EventTrigger:
    """Fires on an event of one of ``types`` for which ``where`` holds."""

    types: tuple[str, ...]
    where: Condition | None = None


@dataclass(frozen=True)
class AbsenceTrigger:
    """Fires ``within_ms`` after an ``after`` event when none of ``missing`` came in between.

    The cart reminder: ``after: add_to_cart``, ``missing: [order_placed,
    order_paid]``, ``within: 24h``.
    """

    after: tuple[str, ...]
    missing: tuple[str, ...]
    within_ms: int
    where: Condition | None = None


@dataclass(frozen=True)
class ScheduleTrigger:
    """Fires at a time relative to a date of the customer's profile, in their time zone.

    ``offset_ms`` is negative for "before" (three days before the birthday:
    ``-3d``); ``at_minute`` is the minute of the local day (``10:00`` = 600).
    """

    date_field: str
    offset_ms: int
    at_minute: int


#: State transitions the profile reports (engage.rules.profiler); the rule
#: engine subscribes to them by kind and, optionally, the name entered.
TRANSITION_KINDS = ("stage_entered", "tag_added", "tag_removed", "segment_entered",
                    "tier_upgraded", "tier_downgraded")


@dataclass(frozen=True)
class TransitionTrigger:
    """Fires when the customer's profile changes: ``stage_entered: declining``."""

    kind: str
    name: str | None = None


Trigger = Union[EventTrigger, AbsenceTrigger, ScheduleTrigger, TransitionTrigger]


# ---------------------------------------------------------------- actions
@dataclass(frozen=True)
class Variant:
    """One arm of an A/B test: its share, and what it changes in the payload."""

    name: str
    weight: int
    payload: Template
    channel: str | None = None


@dataclass(frozen=True)
class Action:
    """What the rule sends: channel, payload, priority, variants and a control share."""

    channel: str                    # a channel, or "preferred"
    payload: Template
    priority: int = 50
    variants: tuple[Variant, ...] = ()
    control_share: float = 0.0      # 0..1, held out and recorded, never sent

    def bucket(self, rule_id: str, customer: str) -> str | None:
        """The customer's arm for this rule: ``"control"``, a variant name, or None.

        Deterministic from the rule id and the customer alone (not the rule
        version), so a customer stays in the same arm across restarts,
        replays and edits of the offer's wording.

        >>> a = Action("push", Template.of({}), variants=(Variant("A", 1, Template.of({})),
        ...            Variant("B", 1, Template.of({}))), control_share=0.1)
        >>> a.bucket("r", "c-1") == a.bucket("r", "c-1")
        True
        """
        point = zlib.crc32(f"{rule_id}\x1f{customer}".encode()) / 2 ** 32
        if point < self.control_share:
            return "control"
        if not self.variants:
            return None
        rest = (point - self.control_share) / (1 - self.control_share)
        total = sum(v.weight for v in self.variants)
        edge = 0.0
        for v in self.variants:
            edge += v.weight / total
            if rest < edge:
                return v.name
        return self.variants[-1].name


# ---------------------------------------------------------------- policy
@dataclass(frozen=True)
class Cap:
    """At most ``max`` messages per ``per_ms``; calendar windows start at local midnight."""

    max: int
    per_ms: int
    calendar: bool = False


@dataclass(frozen=True)
class Eligibility:
    """When a customer may get the same rule again.

    ``once``: never again; ``every``: once per period of ``period_ms`` (the
    period is the action id's time slot); ``cooldown``: not within
    ``period_ms`` of the last time; ``always``: every trigger.
    """

    mode: str = "always"
    period_ms: int = 0


@dataclass(frozen=True)
class QuietHours:
    """Local times (minutes of the day) between which nothing is sent."""

    start_minute: int = 21 * 60
    end_minute: int = 8 * 60
    default_timezone: str = "UTC"

    def contains(self, minute: int) -> bool:
        """True when ``minute`` of the local day is quiet (the window may span midnight)."""
        if self.start_minute == self.end_minute:
            return False
        if self.start_minute < self.end_minute:
            return self.start_minute <= minute < self.end_minute
        return minute >= self.start_minute or minute < self.end_minute


@dataclass(frozen=True)
class Policy:
    """The rules of contact that hold across every rule."""

    global_cap: Cap | None = Cap(2, 7 * 86_400_000)
    channel_caps: tuple[tuple[str, Cap], ...] = ()
    quiet_hours: QuietHours = QuietHours()
    #: Two rules of the same conflict group never both reach a customer within this.
    conflict_window_ms: int = 86_400_000
    #: When rules compete for a customer at once: "defer" the losers (up to
    #: ``max_wait_ms``) or "drop" them.
    arbitration: str = "defer"
    max_wait_ms: int = 2 * 3_600_000


# ---------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """One playbook as the engine runs it."""

    id: str
    version: str                    # content hash of the rule's YAML, see rule_version()
    source: str                     # "file:line" of its definition
    trigger: Trigger
    action: Action
    description: str = ""
    enabled: bool = True
    transactional: bool = False     # exempt from caps (order confirmations, not offers)
    conditions: tuple[Condition, ...] = ()
    eligibility: Eligibility = Eligibility()
    cancel_on: tuple[str, ...] = ()
    cancel_when: Condition | None = None
    on_quiet: str = "defer"
    conflict_group: str | None = None
    cap: Cap | None = None
    attribution_window_ms: int = 7 * 86_400_000


# ---------------------------------------------------------------- tags
@dataclass(frozen=True)
class TagDef:
    """A tag the profile keeps: set while ``when`` holds for the customer.

    ``layer`` is the domain's: ``dynamic`` (windowed behaviour), ``static``
    (profile fields), ``predictive`` (the models' scores).
    """

    id: str
    when: Condition
    layer: str = "dynamic"
    description: str = ""
    source: str = ""


@dataclass(frozen=True)
class Preferences:
    """Preference tags: what a customer likes, from what they viewed, carted and bought.

    Every such event adds its weight to a score per category, style and
    price band, and scores halve every ``half_life_ms`` of event time, so
    old interests fade. The ``top`` scores of at least ``min_score`` are
    tags: ``likes:<category>``, ``style:<style>``, ``price:<band>`` (one band).
    """

    half_life_ms: int = 30 * 86_400_000
    min_score: float = 3.0
    top_categories: int = 3
    top_styles: int = 2
    #: (band, lowest price), ascending.
    price_bands: tuple[tuple[str, float], ...] = (("budget", 0.0), ("mid", 200.0),
                                                  ("premium", 1000.0))
    weights: tuple[tuple[str, float], ...] = (("product_view", 1.0), ("favorite", 2.0),
                                              ("add_to_cart", 3.0), ("order_paid", 5.0))


@dataclass(frozen=True)
class RuleSet:
    """Every rule loaded from a rules directory, the policy, and the tag definitions."""

    rules: tuple[Rule, ...]
    policy: Policy = Policy()
    files: tuple[str, ...] = field(default=())
    tags: tuple[TagDef, ...] = ()
    preferences: Preferences | None = None

    def by_id(self, rule_id: str) -> Rule:
        """The rule called ``rule_id``."""
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)


def rule_version(raw: Any) -> str:
    """Content hash of a rule's definition (its YAML as data, key order ignored).

    >>> rule_version({"id": "x", "a": 1}) == rule_version({"a": 1, "id": "x"})
    True
    """
    canonical = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:7]
