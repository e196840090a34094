"""Two workers give the same customer state and the same action ids as one."""

from __future__ import annotations

import subprocess
import sys

from engage.connectors.devstack import DevStack
from engage.connectors.kafka import ACTIONS_TOPIC, EVENTS_TOPIC, produce_all
from engage.simulator.storefront import Storefront

from stack_helpers import redis_client, state_snapshot, topic_docs


def test_two_workers_reach_the_same_state_and_actions_as_one() -> None:
    records = list(Storefront(seed=5, customers=500, mean_gap_ms=8000).events(20000))
    results = []
    for workers in ("1", "2"):
        with DevStack(event_partitions=3) as stack:
            produce_all(stack.bootstrap, EVENTS_TOPIC, records)
            out = subprocess.run(
                [sys.executable, "-m", "engage.cli", "run", "--stop-at-end", "--no-recovery",
                 "--workers", workers, "--metrics-port", "0"],
                env=stack.env(), capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr[-2000:]
            results.append((state_snapshot(redis_client(stack)),
                            sorted(a["action_id"] for a in topic_docs(stack, ACTIONS_TOPIC))))
    (one_state, one_actions), (two_state, two_actions) = results
    assert len(one_state) > 500 and one_actions  # customers, devices and reminders exist
    assert two_state == one_state
    assert two_actions == one_actions
