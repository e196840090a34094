"""Small records that travel between the steps of the dataflow.

Each step's output is one of these (or an :class:`~engage.events.Event`), so a
reader of ``flows/engagement.py`` can follow what moves where.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Tick(NamedTuple):
    """Event-time progress of one input partition: the largest ``ts`` read so far."""

    partition: int
    max_ts: int


class Merge(NamedTuple):
    """A device's state, handed to the customer who logged in on it."""

    customer: str
    anonymous_id: str
    state: Any  # CustomerState; Any keeps this module free of state imports
    cause_event_id: str


class RedisWrite(NamedTuple):
    """Set (``value`` is bytes) or delete (``value`` is None) one Redis key."""

    key: str
    value: bytes | None


class Emit(NamedTuple):
    """A message for a Kafka topic (actions, audit, dead letters)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class Clock(NamedTuple):
    """A shard's event-time watermark, published so readers share a 'now'."""

    watermark: int
