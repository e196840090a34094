"""What a rule may name: the customer's fields, the trigger's event, functions.

One list serves three purposes: the loader checks conditions and payload
templates against it (an unknown field is a load-time error with a
did-you-mean), :class:`Context` resolves the same names at decision time,
and the names read are what an action's ``explain`` shows.

Customer fields (every rule)::

    <type>_<window>            events of a type in a count window, e.g. product_view_7d
    spend_<window>             spend in a spend window, e.g. spend_30d
    orders, lifetime_spend     lifetime order count and spend
    cart_items, cart_value     the cart now (cart: its lines; cart_categories)
    days_since_last_order, days_since_first_order, days_since_last_visit
    region, timezone, preferred_channel, birthday
    tags, segment, stage, tier, churn_risk, repurchase_30d   (the profile's; empty until set)
    user_id

Trigger fields: ``event.type``, ``event.channel``, ``event.ts``,
``event.event_id`` and ``event.properties.<name>`` (the properties the
contract lists for the trigger's event type) for event and absence triggers;
``change.kind``, ``change.name``, ``change.from``, ``change.to`` for state
transitions.

Functions: ``count(type, window[, category])``, ``consented(channel)``,
``has_tag(name)``, and the pure ones of :mod:`engage.rules.expr`.
"""

from __future__ import annotations

from typing import Any, Callable

from engage.events import EVENT_TYPES, PROPERTY_SCHEMA
from engage.rules.expr import Function, Lookup, Names
from engage.state.customer import StateConfig

DAY_MS = 86_400_000

PROFILE_FIELDS = ("region", "timezone", "preferred_channel", "birthday")
#: Filled by the profile (tags, segments, stages, tiers) and the models; until
#: they are, a rule reading them sees an empty list or null.
PROFILE_VIEWS = ("tags", "segment", "stage", "tier", "churn_risk", "repurchase_30d")
CUSTOMER_SCALARS = ("user_id", "orders", "lifetime_spend", "cart_items", "cart_value", "cart",
                    "cart_categories",
                    "days_since_last_order", "days_since_first_order", "days_since_last_visit")
EVENT_FIELDS = ("event.type", "event.channel", "event.ts", "event.event_id")
CHANGE_FIELDS = ("change.kind", "change.name", "change.from", "change.to")

#: Channels an action may name (``preferred``: the customer's preferred consented one).
CHANNELS = ("push", "sms", "email", "wechat", "webhook")


def customer_fields(cfg: StateConfig) -> list[str]:
    """Every customer field a condition or template may read, given the windows kept."""
    names = list(CUSTOMER_SCALARS) + list(PROFILE_FIELDS) + list(PROFILE_VIEWS)
    for etype in sorted(EVENT_TYPES):
        for w in cfg.counts.windows:
            names.append(f"{etype}_{w.name}")
    for w in cfg.spend.windows:
        names.append(f"spend_{w.name}")
    return names


def event_fields(event_types: tuple[str, ...]) -> list[str]:
    """Fields of a triggering event of one of ``event_types``."""
    props: set[str] = set()
    for etype in event_types:
        props.update(PROPERTY_SCHEMA.get(etype, {}))
    return list(EVENT_FIELDS) + [f"event.properties.{p}" for p in sorted(props)]


def _count(get: Lookup, counter: Any, window: Any, category: Any = None) -> float:
    if not isinstance(counter, str) or not isinstance(window, str):
        raise ValueError("count(type, window[, category]) takes strings")
    name = counter if category is None else f"{counter}|{category}"
    return float(get(f"count:{name}:{window}") or 0)


def _bind_count(counter: Any, window: Any, category: Any = None) -> Callable[[Lookup], float] | None:
    """``count`` with literal arguments: the name it reads is built once, when compiling."""
    if not isinstance(counter, str) or not isinstance(window, str):
        return None   # the call raises, at evaluation, as written
    name = counter if category is None else f"{counter}|{category}"
    key = f"count:{name}:{window}"
    return lambda get: float(get(key) or 0)


def _consented(get: Lookup, channel: Any) -> bool:
    return bool(get(f"consented:{channel}"))


def _has_tag(get: Lookup, tag: Any) -> bool:
    return tag in (get("tags") or ())


FUNCTIONS: tuple[tuple[str, Function], ...] = tuple((f.name, f) for f in (
    Function("count", 2, 3, _count, needs_context=True,
             doc="events of a type (and category) in a window: count('product_view', '7d', 'sofa')",
             bind=_bind_count),
    Function("consented", 1, 1, _consented, needs_context=True,
             doc="whether the customer may be contacted on a channel"),
    Function("has_tag", 1, 1, _has_tag, needs_context=True, doc="whether the customer has a tag"),
))


def names_for(cfg: StateConfig, event_types: tuple[str, ...] = (),
              transition: bool = False) -> Names:
    """The names a rule with this kind of trigger may use."""
    exact = customer_fields(cfg)
    if event_types:
        exact += event_fields(event_types)
    if transition:
        exact += list(CHANGE_FIELDS)
    return Names(frozenset(exact), functions=FUNCTIONS)
