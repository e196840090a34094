"""Event time: which events are late, and how far time has progressed.

Lateness is judged per input partition, from that partition's own history,
so it depends only on the order of records in Kafka: a replay, or a restart
that re-reads a partition, classifies every event exactly as before.

The watermark that fires timers is global: the minimum over partitions of the
largest event time each has shown, minus the allowed lateness. A timer at
``t`` therefore fires only once every partition has moved past
``t + lateness``, so an order that is late but within the allowed lateness
still cancels a reminder due before it.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from engage.events import Event
from engage.operators.records import Tick

NO_WATERMARK = -(2 ** 62)


class PartitionClock:
    """Marks late events of one input partition and says when to publish progress.

    >>> clock = PartitionClock(partition=0, lateness_ms=1000)
    >>> events = [Event("a", "search", 5000, "u", None, None, {}),
    ...           Event("b", "search", 3000, "u", None, None, {})]
    >>> clock.observe(events)
    Tick(partition=0, max_ts=5000, via=-1)
    >>> [e.late for e in events]
    [False, True]
    """

    def __init__(self, partition: int, lateness_ms: int, max_ts: int = NO_WATERMARK) -> None:
        self.partition = partition
        self.lateness_ms = lateness_ms
        self.max_ts = max_ts

    def observe(self, events: list[Event]) -> Tick | None:
        """Mark each event late or not, in arrival order; return progress if any."""
        max_ts = self.max_ts
        start = max_ts
        lateness = self.lateness_ms
        for e in events:
            ts = e.ts
            if ts > max_ts:
                max_ts = ts
            elif ts < max_ts - lateness:
                e.late = True
        self.max_ts = max_ts
        return Tick(self.partition, max_ts) if max_ts > start else None


class Watermark:
    """Global event-time progress as seen by one shard.

    Every input partition holds the watermark back until it reports, so a
    shard that has heard from partition 0 only does not run ahead of
    partition 1. A partition that sent nothing for ``idle_after_s`` of wall
    time stops holding it back, so a quiet partition cannot stall every timer.

    Progress is tracked per source: an input partition, as passed on by one
    identity shard (``(partition, via)``).

    >>> wm = Watermark(lateness_ms=100, idle_after_s=60, sources=((0, -1), (1, -1)),
    ...                clock=lambda: 0.0)
    >>> wm.update(Tick(0, 1000))
    >>> wm.value == NO_WATERMARK
    True
    >>> wm.update(Tick(1, 600))
    >>> wm.value
    500
    """

    def __init__(self, lateness_ms: int, idle_after_s: float,
                 sources: Iterable[tuple[int, int]] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lateness_ms = lateness_ms
        self.idle_after_s = idle_after_s
        self.clock = clock
        self.partitions: dict[tuple[int, int], int] = {s: NO_WATERMARK for s in sources}
        started = clock()
        self.heard: dict[tuple[int, int], float] = {s: started for s in self.partitions}
        self.value = NO_WATERMARK

    def update(self, tick: Tick) -> None:
        """Take in a source's progress and recompute the watermark."""
        source = (tick.partition, tick.via)
        if tick.max_ts > self.partitions.get(source, NO_WATERMARK):
            self.partitions[source] = tick.max_ts
        self.heard[source] = self.clock()
        self._recompute()

    def _recompute(self) -> None:
        now = self.clock()
        active = [ts for p, ts in self.partitions.items()
                  if now - self.heard.get(p, now) <= self.idle_after_s]
        if not active:
            active = [ts for ts in self.partitions.values() if ts != NO_WATERMARK]
        if active and min(active) != NO_WATERMARK:
            candidate = min(active) - self.lateness_ms
            # The watermark never goes back, even when an idle partition wakes up.
            if candidate > self.value:
                self.value = candidate

    def finish(self) -> None:
        """Input ended: every event that will ever arrive has arrived."""
        if self.partitions:
            self.value = max(self.value, max(self.partitions.values()))

    def __reduce__(self) -> tuple:
        # The clock function is not state; a restored watermark uses the
        # default. Explicit, so pickling works compiled (mypyc) or not.
        return (_restore_watermark, (self.lateness_ms, self.idle_after_s, self.partitions,
                                     self.value))


def _restore_watermark(lateness_ms: int, idle_after_s: float,
                       partitions: dict[tuple[int, int], int], value: int) -> Watermark:
    # Wall-clock idleness restarts with the process: every partition gets a
    # fresh chance to report before it counts as idle.
    wm = Watermark(lateness_ms, idle_after_s, partitions)
    wm.partitions = dict(partitions)
    wm.value = value
    return wm
