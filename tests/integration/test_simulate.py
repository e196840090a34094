"""`engage simulate`: storefront events into a real broker, stamped with the wall clock."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import orjson
import pytest

from engage.connectors.kafka import EVENTS_TOPIC, read_topic
from engage.operators.parse import validate

pytestmark = pytest.mark.integration


def test_simulate_produces_contract_events_at_the_rate_and_stops_cleanly_on_sigterm(stack) -> None:
    started_ms = int(time.time() * 1000)
    proc = subprocess.Popen([sys.executable, "-m", "engage.cli", "simulate", "--rate", "200"],
                            env=stack.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)                # what `docker compose stop` sends
    out, _ = proc.communicate(timeout=60)
    stopped_ms = int(time.time() * 1000)
    log = out.decode()
    assert proc.returncode == 0, log

    records = read_topic(stack.bootstrap, EVENTS_TOPIC)
    # Everything it says it produced is on the broker: nothing lost on SIGTERM.
    assert f"{len(records)} events produced, all acknowledged" in log
    # About 200 a second for the ~3-4 s it ran after start-up (loose: a busy machine).
    assert 200 <= len(records) <= 1000, len(records)
    events = []
    for m in records:
        try:
            events.append(validate(orjson.loads(m.value()), stopped_ms, 0))
        except Exception:  # noqa: BLE001 - the storefront's deliberate malformed share
            continue
    assert len(events) >= 0.9 * len(records)
    # Stamped with the wall clock: never in the future, never before the start.
    assert all(started_ms <= e.ts <= stopped_ms for e in events)
    assert len({e.event_id for e in events}) == len(events)
    assert len({m.partition() for m in records}) == 3            # keyed across partitions
