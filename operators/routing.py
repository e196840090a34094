"""Which shard each event goes to.

Device events and logins that link a device go to the identity step first;
everything that already names its customer goes straight to the customer
step. Event-time ticks go to every shard of both.
"""

from __future__ import annotations

import zlib
from typing import Any

from engage.events import Event
from engage.operators.records import Merge, Tick

LINKING_TYPES = frozenset({"login", "register"})


def shard_of(key: str, shards: int) -> str:
    """Stable shard of a customer or device id (the same in every process).

    >>> shard_of("c-1001", 16) == shard_of("c-1001", 16)
    True
    """
    return str(zlib.crc32(key.encode()) % shards)


def needs_identity(e: Event) -> bool:
    """True for device events and for logins that link a device to a customer.

    >>> needs_identity(Event("e", "login", 0, "c-1", "d-1", None, {}))
    True
    >>> needs_identity(Event("e", "search", 0, "c-1", "d-1", None, {"query": "x"}))
    False
    """
    return e.user_id is None or (e.anonymous_id is not None and e.type in LINKING_TYPES)


class Router:
    """Splits ingested items between the identity and customer steps, by shard.

    Each method takes a whole batch (one Python call per batch, not per
    event) and returns ``(shard key, item)`` pairs. Ticks go to every shard.
    """

    def __init__(self, identity_shards: int, customer_shards: int) -> None:
        self.identity_shards = identity_shards
        self.customer_shards = customer_shards
        self.identity_keys = [str(i) for i in range(identity_shards)]
        self.customer_keys = [str(i) for i in range(customer_shards)]

    def to_identity(self, items: list[Any]) -> list[tuple[str, Any]]:
        """Device events and device-linking logins, plus ticks for every identity shard.

        Each shard's copy of a tick names the shard (``via``), which passes
        time on to the customer shards after its own events.
        """
        n = self.identity_shards
        out: list[tuple[str, Any]] = []
        for x in items:
            kind = type(x)
            if kind is Event:
                if needs_identity(x):
                    out.append((shard_of(x.anonymous_id or "", n), x))
            elif kind is Tick:
                out.extend((k, x._replace(via=i)) for i, k in enumerate(self.identity_keys))
        return out

    def to_customers(self, items: list[Any]) -> list[tuple[str, Any]]:
        """Events that already name their customer (time reaches customers via identity)."""
        n = self.customer_shards
        return [(shard_of(x.user_id or "", n), x) for x in items
                if type(x) is Event and not needs_identity(x)]

    def identity_sources(self, partitions: list[int]) -> tuple[tuple[int, int], ...]:
        """What an identity shard waits to hear from: every partition, from the source."""
        return tuple((p, -1) for p in partitions)

    def customer_sources(self, partitions: list[int]) -> tuple[tuple[int, int], ...]:
        """What a customer shard waits to hear from: every partition, via every identity shard."""
        return tuple((p, i) for p in partitions for i in range(self.identity_shards))

    def attributed(self, outputs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """Events, merges and ticks from the identity step, keyed by customer shard."""
        n = self.customer_shards
        out: list[tuple[str, Any]] = []
        for _, x in outputs:
            kind = type(x)
            if kind is Event:
                out.append((shard_of(x.user_id or "", n), x))
            elif kind is Merge:
                out.append((shard_of(x.customer, n), x))
            elif kind is Tick:
                out.extend((k, x) for k in self.customer_keys)
        return out
