"""``engage bench``: the pipeline's throughput beside two baselines, in one run.

1. raw consume + parse: a confluent-kafka loop that reads and validates every
   record and does nothing else: the ceiling any design on this broker has;
2. per-event baseline: the same loop doing the same state updates as the
   engine's windows (counts, last seen, minute/hour/day buckets per type and
   category, spend) with one pipelined Redis round trip per event: the design
   the spine issue rules out;
3. the engine: the production dataflow (parse, event clock, identity,
   windows, carts, reminders, one EVALSHA per batch to Redis) on one worker,
   as ``engage run`` runs it: Bytewax recovery on, a snapshot every 5 s
   (and one at the end), with the spine's rule (the cart reminder,
   benchmarks/rules/spine.yaml). Also measured without recovery, to show
   its cost, and with the full default catalog (every playbook, caps
   checked in Redis once per batch, the profile's tags and membership
   sets), to show what the rules and the profile cost.

All three read the same records from the same embedded (or configured)
broker, so the numbers are comparable. Also reports Redis memory per
customer after the catalog run (profile, tags and membership sets included).

The churn and repurchase models are off in the rows above (they are the
spine's and the rules' numbers) and measured apart: their cost shows only
once labels come due, 30 and 90 days after each prediction point, and the
main corpus spans about a day of event time. So :func:`models_cost` plays a
second corpus spread over a year, through the engine with the models off
and on, and reports both rates, the cost per event, and how many prediction
points and labels the models handled.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from dataclasses import replace
from datetime import timedelta
from datetime import datetime, timezone
from typing import Any

import orjson
import redis
from bytewax.testing import run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from engage.config import Settings
from engage.connectors.redis_store import connect
from engage.connectors.devstack import DevStack
from engage.connectors.kafka import EVENTS_TOPIC, client_config, produce_all
from engage.events import Event
from engage.operators.parse import parse
from engage.rules.loader import CATALOG_DIR
from engage.runtime import engine_flow, prepare_recovery, tune_gc
from engage.simulator.storefront import Storefront

FAR_FUTURE_SKEW_MS = 10 ** 12
SPINE_RULES = str(Path(__file__).resolve().parent / "rules" / "spine.yaml")


def _consume_all(bootstrap: str, expected: int, on_record: Any) -> float:
    """Read every record of the events topic once; returns elapsed seconds."""
    consumer = Consumer(client_config(bootstrap, {"group.id": "engage-bench",
                                                  "enable.auto.commit": False,
                                                  "fetch.wait.max.ms": 20}))
    parts = consumer.list_topics(EVENTS_TOPIC, timeout=10).topics[EVENTS_TOPIC].partitions
    started = time.perf_counter()
    consumer.assign([TopicPartition(EVENTS_TOPIC, p, OFFSET_BEGINNING) for p in parts])
    seen = 0
    while seen < expected:
        for m in consumer.consume(2000, 0.1):
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(str(m.error()))
            on_record(m)
            seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def raw_consume_parse(bootstrap: str, n: int) -> float:
    """Events/s of consume + orjson parse + contract validation, nothing else."""
    now = int(time.time() * 1000)

    def handle(m: Any) -> None:
        parse(m.value(), m.key(), m.partition(), m.offset(), now, FAR_FUTURE_SKEW_MS)

    return n / _consume_all(bootstrap, n, handle)


def per_event_baseline(bootstrap: str, redis_url: str, n: int) -> float:
    """Events/s of consume + parse + the same state updates, one Redis round trip per event.

    Per event, one pipelined round trip does what the engine's state does:
    lifetime count and last-seen per type, the minute, hour and day buckets
    of the type (and of type|category), spend for paid orders, and the TTL.
    """
    client = redis.Redis.from_url(redis_url)
    now = int(time.time() * 1000)

    def handle(m: Any) -> None:
        e = parse(m.value(), m.key(), m.partition(), m.offset(), now, FAR_FUTURE_SKEW_MS)
        if type(e) is not Event:
            return
        key = f"bench:{{{e.user_id or e.anonymous_id}}}"
        names = [e.type]
        if "category" in e.props:
            names.append(f"{e.type}|{e.props['category']}")
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(key, "n:" + e.type, 1)
        pipe.hset(key, "seen:" + e.type, e.ts)
        for gran, tag in ((60_000, "m"), (3_600_000, "h"), (86_400_000, "d")):
            for name in names:
                pipe.hincrby(key, f"{tag}{e.ts // gran}:{name}", 1)
        if e.type == "order_paid":
            pipe.hincrbyfloat(key, f"spend:{e.ts // 86_400_000}", e.props["amount"])
        pipe.expire(key, 86400 * 400)
        pipe.execute()

    return n / _consume_all(bootstrap, n, handle)


def engine(settings: Settings, n: int, recovery: bool = True) -> tuple[float, float]:
    """Events/s of the production dataflow, including and excluding its start-up.

    With ``recovery``, snapshots go to a fresh recovery directory at the
    engine's configured interval, as in production.
    """
    from engage.monitoring import metrics  # noqa: PLC0415

    read_before = metrics.EVENTS_READ._value.get()
    first: list[float] = []
    original = metrics.EVENTS_READ.inc

    def mark(amount: float = 1) -> None:
        if not first:
            first.append(time.perf_counter())
        original(amount)

    metrics.EVENTS_READ.inc = mark  # type: ignore[method-assign]
    scratch = tempfile.TemporaryDirectory(prefix="engage-bench-recovery-")
    try:
        if recovery:
            settings = replace(settings, recovery_dir=scratch.name)
        flow = engine_flow(settings, stop_at_end=True)
        kwargs: dict[str, Any] = {
            "epoch_interval": timedelta(milliseconds=settings.ms("snapshot_interval")),
            "recovery_config": prepare_recovery(settings)}
        tune_gc()
        started = time.perf_counter()
        run_main(flow, **kwargs)
        ended = time.perf_counter()
    finally:
        metrics.EVENTS_READ.inc = original  # type: ignore[method-assign]
        scratch.cleanup()
    read = metrics.EVENTS_READ._value.get() - read_before
    if read != n:
        raise RuntimeError(f"the engine read {read} records, expected {n}")
    return n / (ended - started), n / (ended - first[0])


def redis_footprint(redis_url: str, empty_bytes: int) -> dict[str, float]:
    """Redis memory per customer after a run: everything, and its parts.

    ``total``: ``used_memory`` above the empty server's, per customer (their
    documents, devices, links, contact ledgers, membership sets and index);
    ``customer``: the same less the documents of anonymous visitors (devices
    never linked to a customer), which are not any customer's cost;
    ``visitor``: mean ``MEMORY USAGE`` of an anonymous visitor's document;
    ``document``: mean ``MEMORY USAGE`` of a customer's document;
    ``memberships``: the sets and their index, per customer.
    """
    client = redis.Redis.from_url(redis_url)
    docs = doc_bytes = visitors = visitor_bytes = 0
    for key in client.scan_iter("engage:c:*", count=1000):
        size = client.memory_usage(key, samples=0) or 0
        if key.startswith(b"engage:c:{~"):
            visitors += 1   # a device not linked to anyone
            visitor_bytes += size
        else:
            docs += 1
            doc_bytes += size
    member_bytes = sum(client.memory_usage(k, samples=0) or 0
                       for k in client.scan_iter("engage:members*", count=1000))
    used = int(client.info("memory")["used_memory"]) - empty_bytes
    n = max(docs, 1)
    return {"customers": docs, "visitors": visitors, "total": used / n,
            "customer": (used - visitor_bytes) / n, "visitor": visitor_bytes / max(visitors, 1),
            "document": doc_bytes / n, "memberships": member_bytes / n}


def models_cost(events: int, customers: int, repeat: int = 1) -> dict[str, float]:
    """The engine (spine rule, recovery on) over a year of events, models off and on.

    Own broker and Redis: a separate corpus, ``events`` spread over 365 days
    of event time, so that labels come due and the models learn.
    """
    with DevStack(event_partitions=Settings().event_partitions) as stack:
        base = Settings.load({"kafka_bootstrap": stack.bootstrap, "redis_url": stack.redis_url,
                              "recovery_dir": "", "metrics_port": 0, "rules": SPINE_RULES}, {})
        year_ms = 365 * 86_400_000
        shop = Storefront(seed=7, customers=customers, mean_gap_ms=year_ms // events,
                          start_ms=int(time.time() * 1000) - year_ms - 86_400_000)
        print(f"producing {events} events over a year for the models' cost ...", flush=True)
        produce_all(stack.bootstrap, EVENTS_TOPIC, shop.events(events))
        client = redis.Redis.from_url(stack.redis_url)
        out: dict[str, float] = {"events": events}
        for _ in range(repeat):
            client.flushdb()
            out["off"] = max(out.get("off", 0), engine(replace(base, models=False), events)[0])
            client.flushdb()
            out["on"] = max(out.get("on", 0), engine(replace(base, models=True), events)[0])
        summaries = [orjson.loads(v) for v in client.mget(list(client.scan_iter("engage:model:*")))]
        out["points"] = sum(s["churn_risk"].get("points", 0) for s in summaries)
        out["labels"] = sum(s[m]["validation"]["n"] for s in summaries
                            for m in ("churn_risk", "repurchase_30d"))
    out["us_per_event"] = (1 / out["on"] - 1 / out["off"]) * 1e6
    return out


def main(events: int = 300_000, customers: int = 20_000, write: str | None = None,
         repeat: int = 1, baseline_events: int = 30_000, sessions: int = 1000,
         with_models: bool = True, use_configured: bool = False) -> int:
    """Run every measurement and print (and optionally write) the table.

    On an embedded broker and redis-server of its own, unless ``use_configured``:
    the benchmark writes 300k events to ``engage.events`` and empties the Redis
    database between runs, which must never happen to a deployment's by accident.
    """
    settings = Settings.load({"recovery_dir": "", "metrics_port": 0, "rules": SPINE_RULES,
                              "models": False})
    stack = None
    if not (use_configured and settings.kafka_bootstrap and settings.redis_url):
        stack = DevStack(event_partitions=settings.event_partitions)
        stack.start()
        settings = Settings.load({"kafka_bootstrap": stack.bootstrap, "redis_url": stack.redis_url,
                                  "recovery_dir": "", "metrics_port": 0, "rules": SPINE_RULES,
                                  "models": False})
    catalog = replace(settings, rules=str(CATALOG_DIR))
    # The same rules without the profile's tag definitions: what the rules cost, apart.
    rules_only = replace(settings, rules=",".join(
        str(p) for p in sorted(CATALOG_DIR.glob("*.yaml")) if p.name != "tags.yaml"))
    try:
        print(f"producing {events} events for {customers} customers ...", flush=True)
        shop = Storefront(seed=42, customers=customers, mean_gap_ms=300, sessions=sessions,
                          start_ms=int(time.time() * 1000) - events * 300 - 86_400_000)
        produce_all(settings.kafka_bootstrap or "", EVENTS_TOPIC, shop.events(events))
        rows: dict[str, float] = {}
        client = connect(settings.redis_url or "")   # a cluster URL too
        for _ in range(repeat):
            rows["raw"] = max(rows.get("raw", 0), raw_consume_parse(settings.kafka_bootstrap or "",
                                                                    events))
            client.flushdb()
            rows["no_recovery"] = max(rows.get("no_recovery", 0),
                                      engine(settings, events, recovery=False)[0])
            client.flushdb()
            total, steady = engine(settings, events)
            rows["engine"] = max(rows.get("engine", 0), total)
            rows["engine_steady"] = max(rows.get("engine_steady", 0), steady)
            client.flushdb()
            if with_models:
                # The same day of traffic with the models on: few labels come due in a day.
                rows["models_day"] = max(rows.get("models_day", 0),
                                         engine(replace(settings, models=True), events)[0])
                client.flushdb()
            rows["catalog_rules"] = max(rows.get("catalog_rules", 0),
                                        engine(rules_only, events)[0])
            client.flushdb()
            empty = int(client.info("memory")["used_memory"])
            rows["catalog"] = max(rows.get("catalog", 0), engine(catalog, events)[0])
        # After the catalog run: profiles, tags and membership sets included.
        footprint = redis_footprint(settings.redis_url or "", empty)
        # The per-event loop is slow by design: measure it on a prefix.
        subset = min(baseline_events, events)
        rows["per_event"] = per_event_baseline(settings.kafka_bootstrap or "",
                                               settings.redis_url or "", subset)
    finally:
        if stack is not None:
            stack.stop()
    models = models_cost(min(events, 200_000), customers, repeat) if with_models else None
    table = render(rows, events, customers, subset, footprint, models)
    print(table)
    if write:
        with open(write, "a", encoding="utf-8") as fh:
            fh.write(table + "\n")
    return 0


TAG_NOTE = "8 tags and preference tags, membership sets"


def render(rows: dict[str, float], events: int, customers: int, subset: int,
           footprint: dict[str, float], models: dict[str, float] | None = None) -> str:
    """The result as a markdown section."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    engine_rate = rows["engine"]
    lines = [
        f"### {stamp} — {events:,} events, {customers:,} customers, 1 worker",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, embedded broker and redis-server on the same machine.",
        "",
        "| pipeline | events/s | vs per-event loop |",
        "|---|---:|---:|",
        f"| raw consume + parse (ceiling) | {rows['raw']:,.0f} | {rows['raw'] / rows['per_event']:.1f}× |",
        f"| **engine** (parse, clock, identity, windows, carts, reminders, Redis; "
        f"recovery on) | **{engine_rate:,.0f}** | **{engine_rate / rows['per_event']:.1f}×** |",
        f"| engine, excluding start-up | {rows['engine_steady']:,.0f} | "
        f"{rows['engine_steady'] / rows['per_event']:.1f}× |",
        f"| engine without recovery snapshots | {rows['no_recovery']:,.0f} | "
        f"{rows['no_recovery'] / rows['per_event']:.1f}× |",
        f"| engine with the catalog's rules (9 playbooks, caps in Redis), no tags | "
        f"{rows['catalog_rules']:,.0f} | {rows['catalog_rules'] / rows['per_event']:.1f}× |",
        f"| engine with the full default catalog (rules and tags: {TAG_NOTE}) | "
        f"{rows['catalog']:,.0f} | {rows['catalog'] / rows['per_event']:.1f}× |",
        f"| per-event loop: same updates, one Redis round trip per event ({subset:,} events) | "
        f"{rows['per_event']:,.0f} | 1.0× |",
        "",
        f"Same run, vs the spine rule: the catalog's rules {rows['catalog_rules'] / engine_rate:.0%}, "
        f"the full catalog with tags {rows['catalog'] / engine_rate:.0%} (target ≥ 70%).",
        "",
        f"Redis memory per customer, after the catalog run ({footprint['customers']:,.0f} "
        f"customers, {footprint['visitors']:,.0f} anonymous visitors; target ≤ 2 KB): "
        f"**{footprint['customer']:,.0f} bytes** all-in per customer (used_memory above the empty "
        f"server, less the anonymous visitors' documents: the customer's document, device links, "
        f"contact ledgers, membership sets and their index), of which the document "
        f"{footprint['document']:,.0f} (MEMORY USAGE, mean) and membership sets with their index "
        f"{footprint['memberships']:,.0f}; an anonymous visitor's document "
        f"{footprint['visitor']:,.0f}; everything divided by customers alone "
        f"{footprint['total']:,.0f}.",
        "",
    ]
    if models is not None:
        lines += [
            f"Churn and repurchase models on the same run (about a day of event time: customers "
            f"are scored, few labels come due): {rows['models_day']:,.0f} events/s, "
            f"{rows['models_day'] / engine_rate:.0%} of the spine.",
            "",
            f"Churn and repurchase models (a second corpus: {models['events']:,.0f} events over "
            f"365 days of event time; spine rule, recovery on): models off "
            f"{models['off']:,.0f} events/s, **models on {models['on']:,.0f} events/s** "
            f"({models['on'] / models['off']:.0%}); {models['points']:,.0f} prediction points "
            f"scored and {models['labels']:,.0f} labels learnt; cost "
            f"{models['us_per_event']:.1f} µs per event on average.",
            "",
        ]
    return "\n".join(lines)
