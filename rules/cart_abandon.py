"""The first built-in trigger: a cart left without an order for 24 hours.

Kept deliberately small until the YAML rule language arrives, but real: the
action has the contract's format, a deterministic id and an explanation, and
a channel is chosen only where the customer has not withdrawn consent.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

import orjson

from engage.state.customer import CustomerState
from engage.state.windows import format_duration

RULE_ID = "cart_abandon_24h"
#: Channels tried, in order, after the customer's preferred one.
FALLBACK_CHANNELS = ("push", "email", "sms", "wechat")


def rule_version(delay_ms: int) -> str:
    """Content hash of the rule as configured (changes when its delay does)."""
    text = f"{RULE_ID}|after={delay_ms}|payload=cart_reminder.v1"
    return hashlib.sha256(text.encode()).hexdigest()[:7]


def action_id(rule_id: str, version: str, customer: str, anchor: str) -> str:
    """Deterministic id: the same trigger, replayed, gives the same id.

    >>> action_id("r", "v1", "c-1", "e-9") == action_id("r", "v1", "c-1", "e-9")
    True
    """
    digest = hashlib.sha256(f"{rule_id}\x1f{version}\x1f{customer}\x1f{anchor}".encode())
    return "a-" + digest.hexdigest()[:24]


def iso(ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC string."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def choose_channel(state: CustomerState) -> str | None:
    """The preferred channel if consent allows, else the first consented fallback.

    Consent not recorded counts as not withdrawn (the storefront collected it
    at sign-up); an explicit ``granted: false``, for the channel or for
    ``all``, is never overridden.
    """
    def allowed(channel: str) -> bool:
        for name in (channel, "all"):
            entry = state.consent.get(name)
            if entry is not None and entry[0] is False:
                # A later grant for the specific channel beats an older "all" opt-out.
                specific = state.consent.get(channel)
                if name == "all" and specific is not None and specific[0] and specific[1] > entry[1]:
                    continue
                return False
        return True

    preferred = state.profile.get("preferred_channel", [None])[0]
    for channel in ((preferred,) if preferred else ()) + FALLBACK_CHANNELS:
        if allowed(channel):
            return channel
    return None


def decide(state: CustomerState, due: int, trigger_ids: list[str], delay_ms: int,
           decided_at_ms: int) -> tuple[str, dict[str, Any]]:
    """Build the action (``"send"``) or the suppressed decision (``"audit"``).

    The cart, the trigger and the action id are computed as of the due time,
    so a replay produces the same action. The channel follows consent as it
    is when deciding (an opt-out takes effect at once, even if it came after
    the due time). ``decided_at_ms`` is wall time in a live engine and event
    time in replays.
    """
    version = rule_version(delay_ms)
    items = [{"sku": sku, "category": line[2], "price": line[1], "quantity": line[0]}
             for sku, line in sorted(state.cart.lines(due).items())]
    cart_value = round(sum(i["price"] * i["quantity"] for i in items), 2)
    last_checkout = state.cart.last_checkout(due)
    channel = choose_channel(state)
    doc: dict[str, Any] = {
        "action_id": action_id(RULE_ID, version, state.key, f"{trigger_ids[-1]}@{due}"),
        "rule_id": RULE_ID,
        "rule_version": version,
        "user_id": state.key,
        "channel": channel,
        "payload": {"template": "cart_reminder", "items": items, "cart_value": cart_value},
        "decided_at": iso(decided_at_ms),
        "trigger_ts": iso(due),
        "trigger_event_ids": list(trigger_ids),
        "explain": {
            "trigger": f"add_to_cart, then no order_placed/order_paid within {format_duration(delay_ms)}",
            "cart_items": len(items),
            "cart_value": cart_value,
            "last_add_ts": iso(due - delay_ms),
            "last_order_ts": iso(last_checkout) if last_checkout else None,
        },
    }
    if channel is None:
        doc["reason"] = "consent"
        return "audit", doc
    return "send", doc


def encode(doc: dict[str, Any]) -> bytes:
    """JSON bytes for Kafka."""
    return orjson.dumps(doc)
