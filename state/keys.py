"""Where customer state lives in Redis.

Every key of one customer carries the customer id as a Redis Cluster hash tag
(``{...}``), so all of a customer's keys share a slot.
"""

from __future__ import annotations

PREFIX = "engage"


def state_key(customer_key: str) -> str:
    """The JSON state document of a customer (or of an anonymous device ``~id``).

    >>> state_key("c-1001")
    'engage:c:{c-1001}'
    """
    return f"{PREFIX}:c:{{{customer_key}}}"


def base_key(customer_key: str) -> str:
    """A copy of state written by an earlier deployment, taken over by this one.

    Written once when the customer is first changed here, so that a crash
    before this deployment's first snapshot can start again from it; it
    expires with the state TTL.
    """
    return f"{PREFIX}:base:{{{customer_key}}}"


def link_key(anonymous_id: str) -> str:
    """The customer a device is linked to.

    >>> link_key("d-9c2e")
    'engage:link:{d-9c2e}'
    """
    return f"{PREFIX}:link:{{{anonymous_id}}}"


CLOCK_KEY = f"{PREFIX}:clock"
"""The largest event-time watermark any shard has reached (epoch ms)."""

STATE_PATTERN = f"{PREFIX}:c:*"
"""Matches every state document (SCAN pattern)."""


def contact_keys(customer: str) -> tuple[str, str]:
    """The contact ledger of a customer: sent action ids by event time, and what each was.

    >>> contact_keys("c-1")
    ('engage:sent:{c-1}', 'engage:sentmeta:{c-1}')
    """
    return f"{PREFIX}:sent:{{{customer}}}", f"{PREFIX}:sentmeta:{{{customer}}}"
