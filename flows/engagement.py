"""The engagement dataflow: storefront events in, customer state and actions out.

Read top to bottom, this is the path of one event::

    engage.events ─ parse ─┬─ (invalid) ──────────────────────────────┐
                           └─ event clock (per partition: late?, tick) │
                                ├─ identity (per device shard) ─┐      │
                                └───────────────────────────────┴─ customers (per shard)
                                                                   ├─ state → Redis
                                                                   └─ actions/audit ─┴→ Kafka

Connectors are passed in, so the same flow runs against Kafka and Redis in
production, and against in-memory sources and sinks in pure-logic tests.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from engage.config import Settings
from engage.connectors.kafka import DLQ_TOPIC, RawRecord
from engage.events import Event
from engage.monitoring import metrics
from engage.operators.parse import DeadLetter, parse
from engage.operators.records import Clock, Emit, Merge, RedisWrite
from engage.operators.routing import IDENTITY, EventClockStep, shard_of
from engage.operators.shards import Bootstrap, CustomerShard, IdentityShard, ShardConfig

Now = Callable[[], float]


def parse_batch(max_future_ms: int, now: Now = time.time) -> Callable[[list[RawRecord]], list[Any]]:
    """The parse step: raw records to events and dead letters, counted by type and reason."""

    def step(records: list[RawRecord]) -> list[Any]:
        now_ms = int(now() * 1000)
        out = [parse(value, key, partition, offset, now_ms, max_future_ms)
               for partition, offset, key, value in records]
        types = Counter(x.type if type(x) is Event else "!" + x.reason for x in out)
        for name, n in types.items():
            if name[0] == "!":
                metrics.DEAD_LETTERS.labels(name[1:]).inc(n)
            else:
                metrics.EVENTS.labels(name).inc(n)
        return out

    return step


def dead_letter_message(d: DeadLetter) -> Emit:
    """The original bytes, with the reason and where they came from in headers."""
    return Emit(DLQ_TOPIC, d.key, d.value, (
        ("engage.reason", d.reason.encode()),
        ("engage.detail", d.detail.encode(errors="replace")[:1000]),
        ("engage.source", f"engage.events/{d.partition}@{d.offset}".encode()),
    ))


def is_storage(item: Any) -> bool:
    """Records bound for Redis rather than Kafka or the next step."""
    return type(item) is RedisWrite or type(item) is Clock


def build_flow(settings: Settings, source: Source[RawRecord], state_sink: Sink[Any],
               kafka_sink: Sink[Emit], lineage: str, bootstrap: Bootstrap | None = None,
               live: bool = True, finish_on_eof: bool = True,
               now: Now = time.time) -> Dataflow:
    """Wire the engine's steps between the given connectors.

    ``finish_on_eof``: when the input ends, event time moves to the last
    event and timers due by then fire (bounded runs, replays). A live engine
    that stops on a signal must not: its input has not ended, it paused.
    """
    shard_cfg = ShardConfig(
        state=settings.state_config(),
        lateness_ms=settings.ms("lateness"),
        idle_after_s=settings.ms("idle_partition_after") / 1000,
        lineage=lineage,
        max_links_per_device=settings.max_links_per_device,
        live=live,
        finish_on_eof=finish_on_eof,
    )
    n_ids, n_cust = settings.identity_shards, settings.customer_shards

    flow = Dataflow("engage")
    raw = op.input("read_events", flow, source)
    parsed = op.flat_map_batch("parse", raw, parse_batch(settings.ms("max_future_skew"), now))
    valid = op.branch("valid_or_dead_letter", parsed, lambda x: type(x) is Event)
    dead_letters = op.map("dead_letter_message", valid.falses, dead_letter_message)

    by_partition = op.key_on("by_partition", valid.trues, lambda e: str(e.partition))
    clocked = op.stateful_batch(
        "event_clock", by_partition,
        lambda resume: EventClockStep(shard_cfg.lateness_ms, n_ids, n_cust, resume))
    routed = op.branch("to_identity_or_customers", op.map("unkey_clock", clocked, lambda kv: kv[1]),
                       lambda r: r[0] == IDENTITY)

    identity = op.stateful_batch(
        "identity", op.map("identity_key", routed.trues, lambda r: (r[1], r[2])),
        lambda resume: IdentityShard(shard_cfg, resume, bootstrap))
    identity_out = op.branch("identity_storage", op.map("unkey_identity", identity, lambda kv: kv[1]),
                             is_storage)
    attributed = op.map("customer_of_device_event", identity_out.falses,
                        lambda item: (shard_of(item.customer if type(item) is Merge
                                               else item.user_id, n_cust), item))

    customer_in = op.merge("customer_input",
                           op.map("customer_key", routed.falses, lambda r: (r[1], r[2])),
                           attributed)
    customers = op.stateful_batch("customers", customer_in,
                                  lambda resume: CustomerShard(shard_cfg, resume, bootstrap))
    customer_out = op.branch("customer_storage",
                             op.map("unkey_customers", customers, lambda kv: kv[1]), is_storage)

    op.output("write_state", op.merge("state_writes", identity_out.trues, customer_out.trues),
              state_sink)
    op.output("write_kafka", op.merge("kafka_messages", dead_letters, customer_out.falses),
              kafka_sink)
    return flow
