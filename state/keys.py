"""Where customer state lives in Redis.

Every key of one customer carries the customer id as a Redis Cluster hash tag
(``{...}``), so all of a customer's keys share a slot.
"""

from __future__ import annotations

import hashlib

PREFIX = "engage"


def state_key(customer_key: str) -> str:
    """The state document (JSON, stored compressed) of a customer (or of an anonymous device ``~id``).

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

DOCUMENT_PREFIXES = (f"{PREFIX}:c:", f"{PREFIX}:base:")
"""Keys holding state documents (stored with the state codec, engage.state.codec)."""


def contact_keys(customer: str) -> tuple[str, str]:
    """The contact ledger of a customer: sent action ids by event time, and what each was.

    >>> contact_keys("c-1")
    ('engage:sent:{c-1}', 'engage:sentmeta:{c-1}')
    """
    return f"{PREFIX}:sent:{{{customer}}}", f"{PREFIX}:sentmeta:{{{customer}}}"


MEMBERS_INDEX = f"{PREFIX}:memberships"
"""Hash: customer -> the membership sets it is in (joined by \\x1f), so a write
can leave the sets it no longer belongs to."""


def memberships_key(customer: str) -> str:
    """Redis Cluster only: the sets one customer is in (joined by \\x1f), in the customer's slot.

    The single hash :data:`MEMBERS_INDEX` lives in one slot, which a cluster
    cannot update in the same script as the customer's document; this key
    shares the customer's hash tag instead.

    >>> memberships_key("c-1")
    'engage:memberships:{c-1}'
    """
    return f"{PREFIX}:memberships:{{{customer}}}"


def members_key(membership: str) -> str:
    """The set of customers with a tag, or in a stage, tier or segment.

    >>> members_key("tag:high_intent"), members_key("stage:declining")
    ('engage:members:{tag:high_intent}', 'engage:members:{stage:declining}')
    """
    return f"{PREFIX}:members:{{{membership}}}"


def id_digest(some_id: str) -> str:
    """What is kept of an erased customer or device id: enough to recognise it, not to read it.

    >>> len(id_digest("c-1001"))
    32
    """
    return hashlib.sha256(("engage-erased\x1f" + some_id).encode()).hexdigest()[:32]


ERASURES_KEY = f"{PREFIX}:erasures"
"""List of erasure records (request id, when, how many keys): no customer data."""


def model_key(shard: int) -> str:
    """One customer shard's model summary (versions, labels, validation): ``engage models`` reads them all.

    >>> model_key(3)
    'engage:model:3'
    """
    return f"{PREFIX}:model:{shard}"


MODEL_PATTERN = f"{PREFIX}:model:*"
