"""Assembles a running engine: settings -> connectors -> dataflow -> Bytewax execution.

The only module that knows all the parts; ``cli.py`` calls it, tests and the
benchmark call it too, so they run exactly what production runs.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import orjson
from bytewax._bytewax import cli_main
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from confluent_kafka.admin import AdminClient

from engage.config import Settings
from engage.connectors.kafka import (ACTIONS_TOPIC, ALL_TOPICS, CONTROL_TOPIC, EVENTS_TOPIC,
                                     STOP_READING, EventSource, KafkaTopicsSink, client_config,
                                     ensure_topics)
from engage.connectors.redis_ledger import RedisLedger
from engage.connectors.redis_store import RedisStateSink, connect, has_state, make_loader
from engage.flows.engagement import build_flow
from engage.monitoring.server import OpsServer
from engage.operators.contact import ContactPolicy
from engage.operators.shards import Bootstrap
from engage.rules.book import RuleBook, rule_paths

log = logging.getLogger("engage")

LINEAGE_FILE = "engage-lineage.json"


def lineage(settings: Settings, from_end: bool) -> tuple[str, bool]:
    """This deployment's lineage id, and whether to bootstrap state from Redis.

    With recovery, both are fixed when the recovery directory is created and
    kept in it, so every restart of the deployment agrees on them.
    Bootstrapping only makes sense when the engine takes over from the end of
    the topic; replaying from the beginning rebuilds state from the events.
    """
    def decide() -> dict[str, Any]:
        existing = has_state(connect(settings.redis_url or ""))
        if existing and not from_end:
            log.warning("Redis already holds customer state; replaying the topic from the "
                        "beginning rebuilds it from events and overwrites it "
                        "(use --start-from end to take it over instead)")
        # A cluster's processes are handed the id their supervisor chose (see
        # engage.cluster), so every document of the deployment carries one lineage.
        return {"lineage": settings.lineage or uuid.uuid4().hex[:12],
                "bootstrap": bool(existing and from_end)}

    if not settings.recovery_dir:
        info = decide()
        return info["lineage"], info["bootstrap"]
    path = Path(settings.recovery_dir) / LINEAGE_FILE
    if not path.exists():
        info = decide()
        path.write_bytes(orjson.dumps(info))
    info = orjson.loads(path.read_bytes())
    return info["lineage"], info["bootstrap"]


def prepare_recovery(settings: Settings) -> RecoveryConfig | None:
    """Create and initialise the recovery directory on first use."""
    if not settings.recovery_dir:
        return None
    path = Path(settings.recovery_dir)
    path.mkdir(parents=True, exist_ok=True)
    # Bytewax finds a cluster's partitions wherever some process has them,
    # but each must exist once: in a cluster only process 0 creates them (a
    # shared directory, or process 0's own disk).
    member = bool(settings.addresses) and (settings.process_id or 0) > 0
    if not member and not any(path.glob("part-*.sqlite3")):
        init_db_dir(path, max(1, settings.workers * settings.processes))
    return RecoveryConfig(str(path))


def engine_flow(settings: Settings, stop_at_end: bool = False, from_end: bool = False,
                book: RuleBook | None = None) -> Dataflow:
    """The production dataflow against the configured Kafka and Redis."""
    if not settings.kafka_bootstrap or not settings.redis_url:
        raise ValueError("ENGAGE_KAFKA_BOOTSTRAP and ENGAGE_REDIS_URL must be set "
                         "(or use `engage demo`, which starts both)")
    if settings.addresses and not settings.lineage:
        log.warning("a cluster process without ENGAGE_LINEAGE: unless every process reads the "
                    "same recovery directory, set it to one id on all of them (see Scale-out)")
    line, boot = lineage(settings, from_end)
    bootstrap = (Bootstrap(make_loader(settings.redis_url), line, settings.state_config())
                 if boot else None)
    source = EventSource(settings.kafka_bootstrap, batch_size=settings.batch_size,
                         stop_at_end=stop_at_end, extra=settings.kafka_config, from_end=from_end)
    book = book or load_rule_book(settings)
    url, ttl = settings.redis_url, settings.ms("inactive_ttl")
    # A backfill keeps the profile (and its tags) but decides nothing.
    flow = build_flow(settings, source,
                      RedisStateSink(settings.redis_url, ttl // 1000, settings.state_codec),
                      KafkaTopicsSink(settings.kafka_bootstrap, settings.kafka_config,
                                      latency_topic=ACTIONS_TOPIC),
                      lineage=line, bootstrap=bootstrap, finish_on_eof=stop_at_end,
                      rules=None if settings.backfill else book,
                      contact=ContactPolicy(lambda: RedisLedger(url, ttl)), tags=book,
                      # Erasure requests from the start, even for a deployment that takes
                      # over from the end: one sent while no engine ran must still be done.
                      control=EventSource(settings.kafka_bootstrap, topic=CONTROL_TOPIC,
                                          batch_size=100, stop_at_end=stop_at_end,
                                          extra=settings.kafka_config))
    return flow


def load_rule_book(settings: Settings) -> RuleBook:
    """The rules named by the settings; refuses to start on any error in them."""
    return RuleBook.load(rule_paths(settings.rules), settings.state_config())


def watch_rules(book: RuleBook, interval_s: float) -> threading.Thread | None:
    """Reload changed rule files every ``interval_s`` seconds, in the background."""
    if interval_s <= 0 or not book.paths:
        return None

    def loop() -> None:
        while not STOP_READING.wait(interval_s):
            try:
                book.reload()
            except Exception:  # noqa: BLE001 - a reload must never stop the engine
                log.exception("rule reload failed; the previous rules keep running")

    thread = threading.Thread(target=loop, name="rule-reload", daemon=True)
    thread.start()
    return thread


def readiness_checks(settings: Settings,
                     rules: Callable[[], RuleBook | None] | None = None) -> dict[str, Any]:
    """What /readyz checks: Redis answers PING, Kafka a metadata request, rules are loaded.

    ``rules`` returns the rule book in force, or None while the engine is
    still starting; without it, the settings' rules are loaded here (and a
    broken file raises, as it would stop the engine). A reload refused later
    keeps the previous rules in force, so it does not make the engine unready
    (it is metered in ``engage_rule_reloads_total{outcome="refused"}``).
    """
    client = connect(settings.redis_url or "")
    admin = AdminClient(client_config(settings.kafka_bootstrap or "", settings.kafka_config))
    if rules is None:
        fixed = load_rule_book(settings)
        in_force: Callable[[], RuleBook | None] = lambda: fixed  # noqa: E731
    else:
        in_force = rules

    def redis_ok() -> None:
        client.ping()

    def kafka_ok() -> None:
        admin.list_topics(timeout=2.0)

    def rules_ok() -> None:
        book = in_force()
        if book is None:
            raise RuntimeError("rules not loaded yet")
        if book.current is None:
            raise RuntimeError("no rule set in force")

    return {"redis": redis_ok, "kafka": kafka_ok, "rules": rules_ok}


def tune_gc() -> None:
    """Keep the cyclic garbage collector out of the hot path.

    Customer state is millions of small dicts without reference cycles, so
    reference counting frees it; a full collection would walk all of it
    every few thousand allocations (measured: a third of the engine's time).
    Young generations are still collected; objects alive at start-up are
    frozen out of collection altogether.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def run_engine(settings: Settings, stop_at_end: bool = False, from_end: bool = False,
               serve_ops: bool = True) -> None:
    """Run until interrupted (or, with ``stop_at_end``, until the input is read)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("starting engine with %s", settings.redacted())
    # The ops endpoint comes up before anything slow (topics, recovery, rules),
    # so probes see "alive, not ready" during start-up rather than nothing.
    loaded: list[RuleBook] = []
    ops = None
    if serve_ops and settings.metrics_port:
        ops = OpsServer(settings.metrics_port,
                        readiness_checks(settings, lambda: loaded[-1] if loaded else None)).start()
        log.info("metrics on http://127.0.0.1:%d/metrics", ops.port)
    recovery = prepare_recovery(settings)
    # Topics the contract names are created when missing (never altered).
    ensure_topics(settings.kafka_bootstrap or "", {
        t: settings.event_partitions if t == EVENTS_TOPIC else 1 for t in ALL_TOPICS},
        settings.kafka_config)
    book = load_rule_book(settings)
    loaded.append(book)
    if settings.backfill:
        log.info("backfill: rebuilding state and profiles only; no rule runs, nothing is sent")
    else:
        log.info("%d rules, %d tags in force from %s", len(book.current.rules),
                 len(book.current.tags), ", ".join(book.paths))
        watch_rules(book, settings.ms("rules_reload_interval") / 1000)
    flow = engine_flow(settings, stop_at_end=stop_at_end, from_end=from_end, book=book)
    tune_gc()
    kwargs: dict[str, Any] = {
        "workers_per_process": settings.workers,
        "epoch_interval": timedelta(milliseconds=settings.ms("snapshot_interval")),
        "recovery_config": recovery,
    }
    if settings.addresses:
        kwargs["process_id"] = settings.process_id or 0
        kwargs["addresses"] = list(settings.addresses)
    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after the batches in flight", signum)
        STOP_READING.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        cli_main(flow, **kwargs)
    finally:
        if ops is not None:
            ops.stop()
