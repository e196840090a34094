"""Which shard each event goes to.

Device events and logins that link a device go to the identity step first;
everything that already names its customer goes straight to the customer
step. Event-time ticks go to every shard of both.
"""

from __future__ import annotations

import zlib
from typing import Any

from engage.events import Event
from engage.operators.records import Forget, Merge, ModelCommand, Tick

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


Bundles = list[tuple[str, list[Any]]]
"""``(shard key, items)``: one bundle per shard and batch.

Bytewax routes and buffers every item of a keyed step one by one, a few
microseconds each; handing it one list per shard instead makes that cost
per batch (measured: about a fifth of the engine's time went there). The
shard steps unpack the bundles (see :mod:`engage.operators.steps`).
"""


def _bundle(bundles: dict[str, list[Any]], key: str) -> list[Any]:
    bundle = bundles.get(key)
    if bundle is None:
        bundle = bundles[key] = []
    return bundle


class Router:
    """Splits ingested items between the identity and customer steps, by shard.

    Each method takes a whole batch (one Python call per batch, not per
    event) and returns one bundle of items per shard, in arrival order.
    Ticks go to every shard, after the events they follow.
    """

    def __init__(self, identity_shards: int, customer_shards: int) -> None:
        self.identity_shards = identity_shards
        self.customer_shards = customer_shards
        self.identity_keys = [str(i) for i in range(identity_shards)]
        self.customer_keys = [str(i) for i in range(customer_shards)]

    def to_identity(self, items: list[Any]) -> Bundles:
        """Device events and device-linking logins, plus ticks for every identity shard.

        Each shard's copy of a tick names the shard (``via``), which passes
        time on to the customer shards after its own events.
        """
        n = self.identity_shards
        bundles: dict[str, list[Any]] = {}
        for x in items:
            kind = type(x)
            if kind is Event:
                if needs_identity(x):
                    _bundle(bundles, shard_of(x.anonymous_id or "", n)).append(x)
            elif kind is Tick:
                for i, k in enumerate(self.identity_keys):
                    _bundle(bundles, k).append(x._replace(via=i))
            elif kind is Forget:
                for k in self.identity_keys:
                    _bundle(bundles, k).append(x)
        return list(bundles.items())

    def to_customers(self, items: list[Any]) -> Bundles:
        """Events that already name their customer (time reaches customers via identity),
        erasure requests for the customer's shard, model commands for every shard."""
        n = self.customer_shards
        bundles: dict[str, list[Any]] = {}
        for x in items:
            if type(x) is Event and not needs_identity(x):
                _bundle(bundles, shard_of(x.user_id or "", n)).append(x)
            elif type(x) is Forget:
                _bundle(bundles, shard_of(x.customer, n)).append(x)
            elif type(x) is ModelCommand:
                for k in self.customer_keys:   # every shard keeps a replica
                    _bundle(bundles, k).append(x)
        return list(bundles.items())

    def identity_sources(self, partitions: list[int]) -> tuple[tuple[int, int], ...]:
        """What an identity shard waits to hear from: every partition, from the source."""
        return tuple((p, -1) for p in partitions)

    def customer_sources(self, partitions: list[int]) -> tuple[tuple[int, int], ...]:
        """What a customer shard waits to hear from: every partition, via every identity shard."""
        return tuple((p, i) for p in partitions for i in range(self.identity_shards))

    def attributed(self, outputs: list[tuple[str, Any]]) -> Bundles:
        """Events, merges and ticks from the identity step, bundled by customer shard.

        The identity step hands them on as one list per identity shard and
        batch; anything else it outputs (state writes) is not for customers.
        """
        n = self.customer_shards
        bundles: dict[str, list[Any]] = {}
        for _, bundle in outputs:
            if type(bundle) is not list:
                continue
            for x in bundle:
                kind = type(x)
                if kind is Event:
                    _bundle(bundles, shard_of(x.user_id or "", n)).append(x)
                elif kind is Merge:
                    _bundle(bundles, shard_of(x.customer, n)).append(x)
                elif kind is Tick:
                    for k in self.customer_keys:
                        _bundle(bundles, k).append(x)
        return list(bundles.items())
