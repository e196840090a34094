"""Helpers of the integration tests: settings, producing, running the engine, reading back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
import redis
from bytewax.testing import run_main

from engage.config import Settings
from engage.connectors.devstack import DevStack
from engage.connectors.kafka import EVENTS_TOPIC, produce_all, read_topic
from engage.connectors.redis_store import read_document
from engage.runtime import engine_flow
from engage.state.codec import decode
from engage.state.keys import state_key

from helpers import HOUR, MIN, T0, login, view


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
            doc = orjson.loads(decode(value))
            doc.pop("lin", None)
            out[name] = doc
        elif name != "engage:clock":
            out[name] = value
    return out


def take_over_and_continue(stack: DevStack, client: Any,
                           redis_url: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A first deployment builds c-9 (2 views, a login linking d-9); a second one starts
    with ``--start-from end``, takes the state over and sees one more device view.

    Returns c-9's document after the first deployment and after the second; the
    second deployment must stop cleanly on SIGINT.
    """
    produce(stack, [view(T0, user="c-9"), login(T0 + MIN, "c-9", "d-9"),
                    view(T0 + HOUR, anon="d-9")])
    run_engine(stack, **({"redis_url": redis_url} if redis_url else {}))
    first = read_document(client, state_key("c-9"))
    env = {**stack.env(), "ENGAGE_METRICS_PORT": "0",
           **({"ENGAGE_REDIS_URL": redis_url} if redis_url else {})}
    proc = subprocess.Popen([sys.executable, "-m", "engage.cli", "run", "--no-recovery",
                             "--start-from", "end"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(4)  # let it start and take its end offsets
        # A device linked by the earlier deployment stays linked to its customer.
        # Device events wait for event time to pass them (the identity step
        # orders them), so other customers' later traffic, on every partition,
        # follows.
        produce(stack, [view(T0 + 2 * HOUR, anon="d-9", category="lamp")]
                + [view(T0 + 3 * HOUR, user=f"other-{i}") for i in range(20)])
        deadline = time.monotonic() + 45
        doc = first
        while time.monotonic() < deadline:
            doc = read_document(client, state_key("c-9"))
            if doc["lifetime"].get("product_view") == 3:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"Traceback" not in out
    return first, doc
