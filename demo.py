"""``engage demo``: the whole engine on one machine, showing actions as they fire.

Starts the embedded broker and a redis-server (unless ENGAGE_KAFKA_BOOTSTRAP
and ENGAGE_REDIS_URL point elsewhere), runs the engine as a child process
(exactly as ``engage run`` would), feeds it a simulated storefront whose
event time runs ``speed`` times faster than the wall clock, and prints every
action read back from ``engage.actions``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from engage.config import Settings, redact_url
from engage.connectors.devstack import DevStack, DevStackError, free_port
from engage.connectors.kafka import (ACTIONS_TOPIC, CONVERSIONS_TOPIC, DLQ_TOPIC, EVENTS_TOPIC,
                                     client_config)
from engage.connectors.redis_store import connect, read_clock, read_customer
from engage.simulator.storefront import Storefront


def _engine(env: dict[str, str], metrics_port: int) -> subprocess.Popen[Any]:
    cmd = [sys.executable, "-m", "engage.cli", "run", "--no-recovery",
           "--metrics-port", str(metrics_port)]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _print_action(doc: dict[str, Any]) -> None:
    payload = doc.get("payload", {})
    variant = f" [{doc['variant']}]" if doc.get("variant") else ""
    what = payload.get("template") or ", ".join(sorted(payload))[:30]
    print(f"  ACTION {doc['trigger_ts'][:16]}  {doc['rule_id'] + variant:28s} {doc['user_id']:10s} "
          f"via {doc['channel']:6s} {what}  id {doc['action_id']}", flush=True)


def _print_conversion(rec: dict[str, Any]) -> None:
    arm = f" [{rec['variant']}]" if rec.get("variant") else ""
    if rec["kind"] == "refund":
        what = f"refund, net {rec['net_cents'] / 100:.2f}"
    else:
        what = f"order {rec['order_id']} {rec['revenue_cents'] / 100:.2f}" + (
            f", coupon {rec['coupon']}" if rec.get("redeemed") else "")
    print(f"  CREDIT {rec['ts'][:16]}  {rec['rule_id'] + arm:28s} {rec['user_id']:10s} "
          f"{what}  ({rec['matched_by']})", flush=True)


def run_demo(seconds: float, rate: float, speed: float, metrics_port: int | None,
             customers: int) -> int:
    """Run the demo; returns the process exit code."""
    settings = Settings.load({})
    stack = None
    env = dict(os.environ)
    if not (settings.kafka_bootstrap and settings.redis_url):
        stack = DevStack(event_partitions=settings.event_partitions)
        try:
            stack.start()
        except DevStackError as exc:
            print(f"engage demo: {exc}", file=sys.stderr)
            return 1
        env = stack.env()
    bootstrap = env["ENGAGE_KAFKA_BOOTSTRAP"]
    redis_url = env["ENGAGE_REDIS_URL"]
    port = metrics_port or free_port()
    shown = redact_url(redis_url)   # a configured Redis may carry a password in its URL
    print(f"broker     {bootstrap}\nredis      {shown}\nmetrics    http://127.0.0.1:{port}/metrics")
    print(f"profile    ENGAGE_REDIS_URL={shown} engage profile c-1   (while the demo runs)")
    engine = _engine(env, port)
    producer = Producer(client_config(bootstrap, {"linger.ms": 5}))
    watcher = Consumer(client_config(bootstrap, {"group.id": "engage-demo", "enable.auto.commit": False,
                                                 "fetch.wait.max.ms": 50}))
    watcher.assign([TopicPartition(ACTIONS_TOPIC, 0, OFFSET_BEGINNING),
                    TopicPartition(DLQ_TOPIC, 0, OFFSET_BEGINNING),
                    TopicPartition(CONVERSIONS_TOPIC, 0, OFFSET_BEGINNING)])
    shop = Storefront(seed=int(time.time()) % 1000, customers=customers,
                      start_ms=int(time.time() * 1000) - int(seconds * speed * 1000) - 86_400_000,
                      mean_gap_ms=max(1, int(speed * 1000 / rate)))
    produced = actions = dead = credited = 0
    recipients: dict[str, int] = {}
    print(f"storefront {rate:.0f} events/s, event time x{speed:.0f}; Ctrl-C to stop\n", flush=True)
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            if engine.poll() is not None:
                print(f"engage demo: the engine exited with code {engine.returncode}", file=sys.stderr)
                return 1
            due = int((time.monotonic() - started) * rate) - produced
            for key, value in shop.events(max(0, due)):
                producer.produce(EVENTS_TOPIC, value, key)
                produced += 1
            producer.poll(0)
            for msg in watcher.consume(500, 0.05):
                if msg.error() is not None:
                    continue
                if msg.topic() == ACTIONS_TOPIC:
                    actions += 1
                    doc = orjson.loads(msg.value())
                    recipients[doc["user_id"]] = recipients.get(doc["user_id"], 0) + 1
                    _print_action(doc)
                elif msg.topic() == CONVERSIONS_TOPIC:
                    rec = orjson.loads(msg.value())
                    if rec["credited"]:   # the window records of other rules stay quiet
                        credited += 1
                        _print_conversion(rec)
                else:
                    dead += 1
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        producer.flush(5)
        del producer  # closes its connections before the broker goes away
        _summary(redis_url, produced, actions, dead, recipients, credited)
        watcher.close()
        _stop(engine)
        if stack is not None:
            stack.stop()
    return 0


def _summary(redis_url: str, produced: int, actions: int, dead: int,
             recipients: dict[str, int], credited: int = 0) -> None:
    print(f"\nproduced {produced} events; {dead} dead-lettered (malformed on purpose); "
          f"{actions} actions; {credited} orders credited to them (engage report: per rule)")
    if recipients:
        who = max(recipients, key=lambda k: recipients[k])
        client = connect(redis_url)
        found = read_customer(client, who)
        if found is not None:
            from engage.profile_view import build_view, render  # noqa: PLC0415

            print(f"\nprofile of {who}, as `engage profile {who}` shows it:\n")
            print(render(build_view(Settings.load({}), found[0], found[1], read_clock(client))))
