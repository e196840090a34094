"""Faults while events flow: Redis killed and restarted, the broker restarted, fuzzed input.

Each test runs a live ``engage run`` subprocess against a real broker and a
real redis-server, breaks one of them mid-stream, and compares what the
engine left in Redis and Kafka with an undisturbed run of the same events.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from typing import Any

import orjson
import redis

from engage.connectors.devstack import DevStack
from engage.connectors.kafka import (ACTIONS_TOPIC, ALL_TOPICS, DLQ_TOPIC, EVENTS_TOPIC,
                                     ensure_topics, produce_all, read_topic)
from engage.operators.parse import REASONS, DeadLetter, parse
from engage.state.keys import state_key
from engage.simulator.storefront import Storefront

from fault_helpers import LiveEngine, PersistentRedis, readyz, restart_broker, wait_for
from helpers import DAY, MIN, T0, doc
from stack_helpers import produce, run_engine, state_snapshot, topic_docs

#: Long enough for many failed writes and a not-ready /readyz; the code itself
#: waits for Redis without limit (backoff capped at 2 s). The issue's 30 s:
#: ENGAGE_TEST_REDIS_OUTAGE_S=35 pytest tests/integration/test_faults.py
OUTAGE_S = float(os.environ.get("ENGAGE_TEST_REDIS_OUTAGE_S", "6"))


def _redis_scenario(records: list[Any], outage: bool, wipe: bool = False) -> tuple[Any, ...]:
    half = len(records) // 2
    server = PersistentRedis()
    server.start()
    try:
        with DevStack(event_partitions=3, with_redis=False) as stack:
            stack.redis_url = server.url
            produce_all(stack.bootstrap, EVENTS_TOPIC, records[:half])
            engine = LiveEngine(stack)
            engine.wait_read(half)
            client = redis.Redis.from_url(server.url)
            wait_for(lambda: client.exists("engage:clock"), 30, "the first state write")
            errors_before = engine.metric("engage_redis_errors_total")
            if outage:
                server.kill()
                if wipe:
                    for f in server.dir.glob("appendonly*"):
                        _remove(f)
                # Events keep coming while Redis is away.
                produce_all(stack.bootstrap, EVENTS_TOPIC, records[half:])
                wait_for(lambda: readyz(engine.port) == 503, 15, "/readyz to say not ready")
                wait_for(lambda: engine.metric("engage_redis_errors_total") > errors_before, 15,
                         "failed Redis calls to be metered")
                time.sleep(OUTAGE_S)
                assert engine.alive() and readyz(engine.port) == 503
                server.start()
                wait_for(lambda: readyz(engine.port) == 200, 15, "/readyz to be ready again")
            else:
                produce_all(stack.bootstrap, EVENTS_TOPIC, records[half:])
            engine.wait_read(len(records))
            output = engine.stop()
            client = redis.Redis.from_url(server.url)
            actions = sorted(a["action_id"] for a in topic_docs(stack, ACTIONS_TOPIC))
            return state_snapshot(client), actions, output
    finally:
        server.close()


def _remove(path: Any) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def test_redis_killed_and_restarted_mid_stream_loses_nothing_and_counts_nothing_twice() -> None:
    records = list(Storefront(seed=21, customers=300, mean_gap_ms=30000).events(8000))
    calm_state, calm_actions, _ = _redis_scenario(records, outage=False)
    state, actions, output = _redis_scenario(records, outage=True)
    assert len(calm_state) > 300 and calm_actions
    assert state == calm_state
    assert actions == calm_actions  # the same ids, none twice
    assert "came back without the engine's data" not in output


def test_a_redis_that_comes_back_empty_is_reported() -> None:
    # Without persistence a restarted Redis is empty and the engine rewrites
    # only customers that change afterwards: it must say so, loudly.
    records = list(Storefront(seed=22, customers=100, mean_gap_ms=8000).events(2000))
    _, _, output = _redis_scenario(records, outage=True, wipe=True)
    assert "came back without the engine's data" in output


def _broker_scenario(records: list[Any], restart: bool) -> tuple[Any, ...]:
    half = len(records) // 2
    with DevStack(event_partitions=3) as stack:
        produce_all(stack.bootstrap, EVENTS_TOPIC, records[:half])
        engine = LiveEngine(stack)
        engine.wait_read(half)
        if restart:
            restart_broker(stack)
            # The embedded broker comes back empty: its topics are created
            # again (as the dev stack does), and the engine, finding each
            # partition ending before the position it had reached, reads the
            # new log from its beginning.
            ensure_topics(stack.bootstrap, {t: (3 if t == EVENTS_TOPIC else 1) for t in ALL_TOPICS})
            wait_for(lambda: engine.alive() and engine.output().count("reading it again") >= 3,
                     30, f"the engine to see the recreated partitions\n{engine.output()}")
        produce_all(stack.bootstrap, EVENTS_TOPIC, records[half:])
        engine.wait_read(len(records))
        output = engine.stop()
        actions = [a["action_id"] for a in topic_docs(stack, ACTIONS_TOPIC)]
        return state_snapshot(redis.Redis.from_url(stack.redis_url)), actions, output


def test_broker_restarted_mid_stream_the_engine_reconnects_and_resumes() -> None:
    records = list(Storefront(seed=23, customers=200, mean_gap_ms=30000).events(6000))
    calm_state, calm_actions, _ = _broker_scenario(records, restart=False)
    state, actions, output = _broker_scenario(records, restart=True)
    assert len(calm_state) > 200 and calm_actions
    # Every event before and after the restart reached the customers' state.
    assert state == calm_state
    # Actions written before the restart were lost with the broker's memory;
    # those decided after it are there, with the ids an undisturbed run gives.
    assert actions and set(actions) <= set(calm_actions)
    assert "Traceback" not in output


def _fuzzed_records(rng: random.Random, n: int) -> list[bytes]:
    """Garbage and broken events: random bytes, truncated and mutated JSON, wrong field types."""
    base = [orjson.dumps(doc("add_to_cart", T0 + i * MIN, f"c-f{i % 7}", sku=f"s{i}",
                             category="lamp", price=10.0, quantity=1)) for i in range(n)]
    out: list[bytes] = []
    for i, raw in enumerate(base):
        kind = i % 5
        if kind == 0:
            out.append(rng.randbytes(rng.randint(0, 60)))
        elif kind == 1:
            out.append(raw[:rng.randint(0, len(raw) - 1)])
        elif kind == 2:
            flipped = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            out.append(bytes(flipped))
        else:
            event = orjson.loads(raw)
            field = rng.choice(["event_id", "type", "ts", "user_id", "properties"])
            event[field] = rng.choice([None, 7, -1.5, "", "x", [], {}, True, "1999-01-01T00:00:00Z"])
            out.append(orjson.dumps(event))
    return out


def test_fuzzed_records_through_the_broker_all_reach_the_dlq_and_the_flow_goes_on(stack) -> None:
    rng = random.Random(6)
    fuzzed = _fuzzed_records(rng, 400)
    tail = [doc("product_view", T0 + DAY + i * MIN, f"c-tail{i}", sku="s", category="lamp")
            for i in range(20)]
    produce(stack, [*fuzzed, *tail])
    run_engine(stack)
    # The engine's own verdict on each record is what the DLQ must show: a
    # dead letter for every bad record, with its reason, bytes and origin.
    now = int(time.time() * 1000)
    expected_bad = sorted(raw for raw in fuzzed
                          if isinstance(parse(raw, None, 0, 0, now, 300_000), DeadLetter))
    assert len(expected_bad) > 300
    dead = read_topic(stack.bootstrap, DLQ_TOPIC)
    assert sorted(m.value() for m in dead) == expected_bad
    for m in dead:
        headers = dict(m.headers())
        assert headers["engage.reason"].decode() in REASONS
        assert headers["engage.source"].startswith(b"engage.events/")
    client = redis.Redis.from_url(stack.redis_url)
    assert all(client.exists(state_key(f"c-tail{i}")) for i in range(20))
