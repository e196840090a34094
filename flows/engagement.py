"""The engagement dataflow: storefront events in, customer state and actions out.

Read top to bottom, this is the path of one event::

    engage.events ─ ingest (parse, late?, tick) ─┬─ dead letters ─────────────────────────→ engage.dlq
    engage.control (erasures, model commands) ───┤
                                                 ├─ identity (device shards) ─┬─ device state ─→ Redis
                                                 │                            └─ attributed ─┐
                                                 └─ events that name their customer ─────────┴─ customers
    customers (shards: state, profile, models, rules) ─┬─ state, memberships ─────────────────→ Redis
                                                       ├─ profile changes ───────────→ engage.profile_changes
                                                       ├─ decisions ─ contact ledger (caps, conflict groups)
                                                       │    ├─ sent ─────────────────────────→ engage.actions
                                                       │    ├─ not sent, with the reason ────→ engage.audit
                                                       │    └─ touches (sent, control) ─┐
                                                       └─ orders, erasures ─────────────┴─ attribution (shards)
                                                                                        ─→ engage.conversions

Every step between the source and the sinks takes whole batches, so Python
is called once per batch and shard, not once per event. Connectors are
passed in: the same flow runs against Kafka and Redis in production and
against in-memory lists in pure-logic tests.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.outputs import Sink

from engage.config import Settings
from engage.connectors.kafka import DLQ_TOPIC
from engage.operators.attribution import kafka_messages, to_attribution
from engage.operators.contact import ContactPolicy
from engage.operators.ingest import ControlSource, IngestSource, Now
from engage.operators.parse import DeadLetter
from engage.operators.records import Emit, RawRecord, StateWrites
from engage.operators.routing import Router
from engage.operators.shards import Bootstrap, ShardConfig, forget_model_summaries
from engage.operators.steps import attribution_step, customer_step, identity_step



def dead_letter_messages(items: list[Any]) -> list[Emit]:
    """The original bytes of each dead letter, with the reason and its origin in headers."""
    return [Emit(DLQ_TOPIC, d.key, d.value, (
        ("engage.reason", d.reason.encode()),
        ("engage.detail", d.detail[:1000].encode(errors="replace")),
        ("engage.source", f"engage.events/{d.partition}@{d.offset}".encode()),
    )) for d in items if type(d) is DeadLetter]


def state_writes(outputs: list[tuple[str, Any]]) -> list[StateWrites]:
    """The Redis writes among a stateful step's outputs."""
    return [x for _, x in outputs if type(x) is StateWrites]


def build_flow(settings: Settings, source: FixedPartitionedSource[RawRecord, Any],
               state_sink: Sink[StateWrites], kafka_sink: Sink[Emit], lineage: str,
               bootstrap: Bootstrap | None = None, live: bool = True,
               finish_on_eof: bool = True, now: Now = time.time,
               rules: Any = None, contact: ContactPolicy | None = None,
               tags: Any = None,
               control: FixedPartitionedSource[RawRecord, Any] | None = None) -> Dataflow:
    """Wire the engine's steps between the given connectors.

    ``source`` yields raw ``(partition, offset, key, value)`` records.
    ``rules`` is a :class:`~engage.rules.book.RuleBook` (None: no rules;
    ``tags`` then names the book whose tag definitions the profile keeps);
    ``contact`` checks decisions against the contact ledger before they go
    out (by default an in-memory ledger: replays and pure-logic tests).
    ``control``: raw records of the control topic (erasure requests).
    ``finish_on_eof``: when the input ends, event time moves to the last
    event and timers due by then fire (bounded runs, replays). A live engine
    that stops on a signal must not: its input has not ended, it paused.
    """
    parts = [int(p) for p in source.list_parts() if p.isdigit()]
    forget_model_summaries()
    router = Router(settings.identity_shards, settings.customer_shards)
    shard_cfg = ShardConfig(
        state=settings.state_config(),
        lateness_ms=settings.ms("lateness"),
        idle_after_s=settings.ms("idle_partition_after") / 1000,
        lineage=lineage,
        max_links_per_device=settings.max_links_per_device,
        live=live,
        finish_on_eof=finish_on_eof,
        sources=router.identity_sources(parts),
        flush_every_ms=settings.ms("state_flush_interval"),
        rules=rules,
        profile=settings.profile_config(),
        tags=tags,
        models=settings.model_config(),
        customer_shards=settings.customer_shards,
    )
    if contact is None:
        from engage.state.contact import MemoryLedger  # noqa: PLC0415

        contact = ContactPolicy(MemoryLedger.empty())
    customer_cfg = replace(shard_cfg, sources=router.customer_sources(parts))

    flow = Dataflow("engage")
    ingested = op.input("read_events", flow, IngestSource(
        source, shard_cfg.lateness_ms, settings.ms("max_future_skew"), now))
    dead_letters = op.flat_map_batch("dead_letters", ingested, dead_letter_messages)
    if control is not None:
        # Erasure requests travel the same routes as events (see Router).
        ingested = op.merge("with_control", ingested,
                            op.input("read_control", flow, ControlSource(control)))

    identity = op.stateful_batch(
        "identity", op.flat_map_batch("route_to_identity", ingested, router.to_identity),
        identity_step(shard_cfg, bootstrap))
    attributed = op.flat_map_batch("route_attributed", identity, router.attributed)

    customer_input = op.merge("customer_input",
                              op.flat_map_batch("route_to_customers", ingested, router.to_customers),
                              attributed)
    customers = op.stateful_batch("customers", customer_input,
                                  customer_step(customer_cfg, bootstrap))

    op.output("write_state", op.merge(
        "state_writes",
        op.flat_map_batch("identity_state", identity, state_writes),
        op.flat_map_batch("customer_state", customers, state_writes)), state_sink)
    checked = op.flat_map_batch("contact_policy", customers, contact)
    messages = [dead_letters, op.flat_map_batch("checked_messages", checked, kafka_messages)]
    if rules is not None:
        # Keyed like the customer step: shard n's touches and orders stay on its worker.
        attribution = op.stateful_batch(
            "attribution",
            op.flat_map_batch("route_to_attribution", checked,
                              to_attribution(settings.customer_shards)),
            attribution_step(shard_cfg.lateness_ms))
        messages.append(op.flat_map_batch("conversions", attribution, kafka_messages))
    op.output("write_kafka", op.merge("kafka_messages", *messages), kafka_sink)
    return flow
