"""Ingestion at the source: raw records to events, late marks and event-time ticks.

:class:`IngestSource` wraps any partitioned source of raw records (Kafka in
production, an in-memory list in tests). Each partition parses its records,
judges lateness from its own history, and says how far its event time has
come. Doing it in the source (as Flink does with watermarks) costs no extra
dataflow step per event, and the partition's clock is snapshotted together
with its offset, so a restart judges every replayed event exactly as before.

:class:`ControlSource` reads requests to the engine itself (``engage forget``)
from the control topic; they take the events' routes to the shards.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime
from typing import Any, Callable

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from engage.events import Event
from engage.monitoring import metrics
from engage.operators.event_time import NO_WATERMARK, PartitionClock
from engage.operators.parse import DeadLetter, parse
from engage.operators.records import Forget, ModelCommand, RawRecord

Now = Callable[[], float]
log = logging.getLogger(__name__)


class _IngestPartition(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: StatefulSourcePartition[RawRecord, Any], clock: PartitionClock,
                 max_future_ms: int, now: Now) -> None:
        self.inner = inner
        self.clock = clock
        self.max_future_ms = max_future_ms
        self.now = now

    def next_batch(self) -> list[Any]:
        records = list(self.inner.next_batch())
        if not records:
            return []
        now_ms = int(self.now() * 1000)
        future = self.max_future_ms
        items: list[Any] = [parse(value, key, partition, offset, now_ms, future)
                            for partition, offset, key, value in records]
        events = [x for x in items if type(x) is Event]
        if len(events) != len(items):
            for reason, n in Counter(x.reason for x in items if isinstance(x, DeadLetter)).items():
                metrics.DEAD_LETTERS.labels(reason).inc(n)
        for etype, n in Counter(e.type for e in events).items():
            metrics.EVENTS.labels(etype).inc(n)
        self.clock.partition = records[0][0]
        tick = self.clock.observe(events)
        if tick is not None:
            items.append(tick)
        return items

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    def snapshot(self) -> tuple[Any, int, int]:
        return (self.inner.snapshot(), self.clock.partition, self.clock.max_ts)

    def close(self) -> None:
        self.inner.close()


class IngestSource(FixedPartitionedSource[Any, Any]):
    """Events, dead letters and :class:`~engage.operators.records.Tick` from raw records."""

    def __init__(self, inner: FixedPartitionedSource[RawRecord, Any], lateness_ms: int,
                 max_future_ms: int, now: Now = time.time) -> None:
        self.inner = inner
        self.lateness_ms = lateness_ms
        self.max_future_ms = max_future_ms
        self.now = now

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _IngestPartition:
        inner_state, partition, max_ts = resume_state if resume_state is not None \
            else (None, -1, NO_WATERMARK)
        inner = self.inner.build_part(step_id, for_part, inner_state)
        return _IngestPartition(inner, PartitionClock(partition, self.lateness_ms, max_ts),
                                self.max_future_ms, self.now)


def parse_control(value: bytes | None) -> Forget | ModelCommand | None:
    """A control message, or None (logged) when it is not one we know.

    >>> parse_control(b'{"forget": "c-1", "request_id": "r-1"}')
    Forget(customer='c-1', request_id='r-1')
    >>> parse_control(b'{"model": "churn_risk", "op": "pin", "request_id": "r-2"}')
    ModelCommand(model='churn_risk', op='pin', request_id='r-2')
    """
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("forget"), str) and doc["forget"] \
            and isinstance(doc.get("request_id"), str):
        return Forget(doc["forget"], doc["request_id"])
    if isinstance(doc, dict) and doc.get("model") in ("churn_risk", "repurchase_30d", "all") \
            and doc.get("op") in ("reset", "pin", "unpin") and isinstance(doc.get("request_id"), str):
        return ModelCommand(doc["model"], doc["op"], doc["request_id"])
    log.warning("ignored a control message that is neither a forget request nor a model "
                "command: %r", (value or b"")[:200])
    return None


class _ControlPartition(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: StatefulSourcePartition[RawRecord, Any]) -> None:
        self.inner = inner

    def next_batch(self) -> list[Any]:
        return [f for f in (parse_control(r[3]) for r in self.inner.next_batch()) if f is not None]

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class ControlSource(FixedPartitionedSource[Any, Any]):
    """Erasure requests and model commands from raw control records."""

    def __init__(self, inner: FixedPartitionedSource[RawRecord, Any]) -> None:
        self.inner = inner

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _ControlPartition:
        return _ControlPartition(self.inner.build_part(step_id, for_part, resume_state))
