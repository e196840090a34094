"""``engage simulate``: the simulated storefront writing to a real Kafka, paced by the wall clock.

The producer half of ``engage demo`` on its own, for a deployment (the
docker compose stack runs it beside the engine) or a load test: events go to
``engage.events`` on ``ENGAGE_KAFKA_BOOTSTRAP`` with the configured client
settings (SASL/SSL included). Event time starts at the wall clock's now and
runs ``speed`` times as fast; an event is produced once the wall clock has
reached its (scaled) time, so at ``speed`` 1 every event is "now" and the
engine's end-to-end latency reads true.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any, TextIO

from confluent_kafka import Producer

from engage.config import Settings
from engage.connectors.kafka import EVENTS_TOPIC, client_config, ensure_topics
from engage.simulator.storefront import Storefront

#: How often a progress line is printed (seconds).
REPORT_EVERY_S = 10.0


def simulate(settings: Settings, rate: float, speed: float = 1.0, seconds: float = 0.0,
             customers: int = 1000, seed: int | None = None, out: TextIO = sys.stdout) -> int:
    """Produce storefront events at about ``rate`` per second until ``seconds`` pass
    (0: until SIGINT/SIGTERM); returns the exit code.

    The storefront's clock ticks in milliseconds, so the rate is at most
    1000 × ``speed`` events per second. A different ``seed`` (by default the
    start time) gives different event ids, so a restarted simulator never
    repeats an id it used before.
    """
    if not settings.kafka_bootstrap:
        print("engage simulate: ENGAGE_KAFKA_BOOTSTRAP is not set", file=sys.stderr)
        return 2
    if rate <= 0 or speed <= 0:
        print("engage simulate: --rate and --speed must be positive", file=sys.stderr)
        return 2
    ensure_topics(settings.kafka_bootstrap, {EVENTS_TOPIC: settings.event_partitions},
                  settings.kafka_config)
    producer = Producer(client_config(settings.kafka_bootstrap,
                                      {"linger.ms": 20, **settings.kafka_config}))
    start_ms = int(time.time() * 1000)
    shop = Storefront(seed=int(time.time()) if seed is None else seed, customers=customers,
                      start_ms=start_ms, mean_gap_ms=max(1, round(speed * 1000 / rate)))
    stream = shop.events(sys.maxsize)
    stopping: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    print(f"engage simulate: {rate:g} events/s to {EVENTS_TOPIC} on {settings.kafka_bootstrap}, "
          f"event time x{speed:g}", file=out, flush=True)
    produced = 0
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    started = time.monotonic()
    reported = started
    pending = next(stream)          # the storefront's clock (shop.now) is this event's time
    try:
        while not stopping and not failed and (seconds <= 0 or time.monotonic() - started < seconds):
            due_ms = start_ms + (time.monotonic() - started) * speed * 1000
            while shop.now <= due_ms:
                key, value = pending
                try:
                    producer.produce(EVENTS_TOPIC, value, key, on_delivery=delivered)
                except BufferError:
                    break             # the local queue is full: poll below, retry this one
                produced += 1
                pending = next(stream)
            producer.poll(0.01)
            if time.monotonic() - reported >= REPORT_EVERY_S:
                reported = time.monotonic()
                print(f"engage simulate: {produced} events produced", file=out, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        left = producer.flush(30)
    if failed or left:
        print(f"engage simulate: the broker refused events ({(failed or ['flush timed out'])[0]})",
              file=sys.stderr)
        return 1
    print(f"engage simulate: {produced} events produced, all acknowledged", file=out, flush=True)
    return 0
