"""In-memory connectors: records from a list in, outputs into lists.

For replays and backtests (``engage replay``), the logic benchmark and
pure-logic tests: the same dataflow as production, with nothing to connect
to. Each partition of a :class:`ListSource` snapshots its position, so
even these runs recover like the real one.
"""

from __future__ import annotations

from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition


class _ListPartition(StatefulSourcePartition[Any, int]):
    def __init__(self, records: list[Any], start: int, batch: int) -> None:
        self.records, self.pos, self.batch = records, start, batch

    def next_batch(self) -> list[Any]:
        if self.pos >= len(self.records):
            raise StopIteration()
        out = self.records[self.pos:self.pos + self.batch]
        self.pos += len(out)
        return out

    def snapshot(self) -> int:
        return self.pos


class ListSource(FixedPartitionedSource[Any, int]):
    """Raw ``(partition, offset, key, value)`` records, split by partition like a topic."""

    def __init__(self, records: list[Any], batch: int = 8000) -> None:
        self.parts: dict[str, list[Any]] = {}
        for r in records:
            self.parts.setdefault(str(r[0]), []).append(r)
        if not self.parts:
            self.parts["0"] = []
        self.batch = batch

    def list_parts(self) -> list[str]:
        return sorted(self.parts)

    def build_part(self, step_id: str, for_part: str, resume: int | None) -> _ListPartition:
        return _ListPartition(self.parts[for_part], resume or 0, self.batch)


class _Collecting(StatelessSinkPartition[Any]):
    def __init__(self, items: list[Any] | None, counter: list[int]) -> None:
        self.items = items
        self.counter = counter

    def write_batch(self, items: list[Any]) -> None:
        self.counter[0] += len(items)
        if self.items is not None:
            self.items.extend(items)


class ListSink(DynamicSink[Any]):
    """Keeps what it is given (``keep=False``: only counts it)."""

    def __init__(self, keep: bool = True) -> None:
        self.items: list[Any] | None = [] if keep else None
        self.counter = [0]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Collecting:
        return _Collecting(self.items, self.counter)
