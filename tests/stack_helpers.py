"""Helpers of the integration tests: settings, producing, running the engine, reading back."""

from __future__ import annotations

from typing import Any

import orjson
import redis
from bytewax.testing import run_main

from engage.config import Settings
from engage.connectors.devstack import DevStack
from engage.connectors.kafka import EVENTS_TOPIC, produce_all, read_topic
from engage.runtime import engine_flow


def settings_for(stack: DevStack, **over: Any) -> Settings:
    """Engine settings pointing at the stack."""
    return Settings.load({"kafka_bootstrap": stack.bootstrap, "redis_url": stack.redis_url,
                          "recovery_dir": "", "metrics_port": 0, **over}, {})


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
        value = client.get(key)
        name = key.decode()
        if name.startswith("engage:c:"):
            doc = orjson.loads(value)
            doc.pop("lin", None)
            out[name] = doc
        elif name != "engage:clock":
            out[name] = value
    return out
