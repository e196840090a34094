"""Which shard each event goes to, and the per-partition event clock step.

The clock step runs once per input partition: it marks late events, then
sends each event to the step that must see it first (the identity step for
device events and logins that link a device, the customer step otherwise),
and tells every shard how far event time has come.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable

from bytewax.operators import StatefulBatchLogic

from engage.events import Event
from engage.operators.event_time import NO_WATERMARK, PartitionClock
from engage.operators.records import Tick

IDENTITY = "i"
CUSTOMERS = "c"
LINKING_TYPES = frozenset({"login", "register"})

Routed = tuple[str, str, Any]
"""``(destination step, shard key, item)``."""


def shard_of(key: str, shards: int) -> str:
    """Stable shard of a customer or device id (the same in every process).

    >>> shard_of("c-1001", 16) == shard_of("c-1001", 16)
    True
    """
    return str(zlib.crc32(key.encode()) % shards)


def route(e: Event, identity_shards: int, customer_shards: int) -> Routed:
    """Device events and device-linking logins go to identity; the rest to customers."""
    if e.user_id is None or (e.anonymous_id is not None and e.type in LINKING_TYPES):
        return (IDENTITY, shard_of(e.anonymous_id or "", identity_shards), e)
    return (CUSTOMERS, shard_of(e.user_id, customer_shards), e)


class EventClockStep(StatefulBatchLogic):
    """Bytewax logic for one input partition: lateness, routing, ticks.

    Its snapshot is the partition and the largest event time seen on it, so
    after a restart late events are judged exactly as before.
    """

    def __init__(self, lateness_ms: int, identity_shards: int, customer_shards: int,
                 resume: tuple[int, int] | None) -> None:
        # Bytewax does not tell a builder its key: the partition is learnt
        # from the first event (every event of this key carries it).
        partition, max_ts = resume if resume is not None else (-1, NO_WATERMARK)
        self.clock = PartitionClock(partition, lateness_ms, max_ts)
        self.identity_shards = identity_shards
        self.customer_shards = customer_shards
        self.identity_keys = [str(i) for i in range(identity_shards)]
        self.customer_keys = [str(i) for i in range(customer_shards)]

    def on_batch(self, events: list[Event]) -> tuple[Iterable[Routed], bool]:
        """Mark, route and tick."""
        if events:
            self.clock.partition = events[0].partition
        tick = self.clock.observe(events)
        ids, cs = self.identity_shards, self.customer_shards
        out: list[Routed] = [route(e, ids, cs) for e in events]
        if tick is not None:
            out.extend((IDENTITY, k, tick) for k in self.identity_keys)
            out.extend((CUSTOMERS, k, tick) for k in self.customer_keys)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> tuple[int, int]:
        """The partition and the largest event time seen on it."""
        return (self.clock.partition, self.clock.max_ts)


def is_tick(item: Any) -> bool:
    """True for event-time progress records."""
    return type(item) is Tick
