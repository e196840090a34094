"""Helpers of the integration tests: settings, producing, running the engine, reading back."""

from __future__ import annotations

import os
from typing import Any

import orjson
import redis
from bytewax.testing import run_main

from engage.config import Settings
from engage.connectors.devstack import DevStack
from engage.connectors.kafka import EVENTS_TOPIC, produce_all, read_topic
from engage.runtime import engine_flow


def settings_for(stack: DevStack, **over: Any) -> Settings:
    """Engine settings pointing at the stack (rules: the tests' default, see conftest)."""
    return Settings.load({"kafka_bootstrap": stack.bootstrap, "redis_url": stack.redis_url,
                          "recovery_dir": "", "metrics_port": 0,
                          "rules": os.environ.get("ENGAGE_RULES"), **over}, {})


def produce(stack: DevStack, events: list[Any]) -> None:
    """Write events (dicts or raw bytes) to engage.events, keyed as a storefront would."""
    records = []
    for e in events:
        if isinstance(e, bytes):
            records.append((b"raw", e))
        else:
            records.append(((e.get("user_id") or e.get("anonymous_id") or "none").encode(),
                            orjson.dumps(e)))
    produce_all(stack.bootstrap, EVENTS_TOPIC, records)


def run_engine(stack: DevStack, **over: Any) -> None:
    """Run the production dataflow in-process until the input topic is read."""
    run_main(engine_flow(settings_for(stack, **over), stop_at_end=True))


def redis_client(stack: DevStack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url)


def topic_docs(stack: DevStack, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in read_topic(stack.bootstrap, topic)]


def state_snapshot(client: redis.Redis) -> dict[str, Any]:
    """Every engine key and its decoded value, minus the deployment's lineage stamp."""
    out: dict[str, Any] = {}
    for key in client.scan_iter("engage:*"):
        name = key.decode()
        kind = client.type(key)
        if kind == b"zset":
            out[name] = client.zrange(key, 0, -1, withscores=True)
            continue
        if kind == b"hash":
            out[name] = client.hgetall(key)
            continue
        if kind == b"set":
            out[name] = client.smembers(key)
            continue
        value = client.get(key)
        if name.startswith("engage:c:"):
            doc = orjson.loads(value)
            doc.pop("lin", None)
            out[name] = doc
        elif name != "engage:clock":
            out[name] = value
    return out
