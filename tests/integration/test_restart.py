"""A real engine process killed with -9 mid-run resumes to exactly the state of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engage.connectors.devstack import DevStack
from engage.connectors.kafka import ACTIONS_TOPIC, EVENTS_TOPIC, produce_all
from engage.simulator.storefront import Storefront

from stack_helpers import redis_client, state_snapshot, topic_docs

EVENTS = 200_000


def engine(stack: DevStack, recovery: Path) -> subprocess.Popen:
    env = {**stack.env(), "ENGAGE_METRICS_PORT": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "engage.cli", "run", "--stop-at-end", "--recovery-dir", str(recovery),
         "--snapshot-interval", "300ms", "--batch-size", "500"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout: float = 240) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]


@pytest.fixture
def two_stacks():
    with DevStack(event_partitions=3) as a, DevStack(event_partitions=3) as b:
        records = list(Storefront(seed=11, customers=3000, mean_gap_ms=2000).events(EVENTS))
        produce_all(a.bootstrap, EVENTS_TOPIC, records)
        produce_all(b.bootstrap, EVENTS_TOPIC, records)
        yield a, b


def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(two_stacks, tmp_path: Path) -> None:
    straight, crashed = two_stacks
    finish(engine(straight, tmp_path / "straight"))

    proc = engine(crashed, tmp_path / "crashed")
    r = redis_client(crashed)
    deadline = time.monotonic() + 120
    # Wait for real progress (state written, snapshots taken), then kill mid-stream.
    while r.dbsize() < 500 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)  # past the first snapshots (every 300 ms), well before the end
    assert proc.poll() is None, "the engine finished before it could be killed: raise EVENTS"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = r.dbsize()
    assert partial > 0

    finish(engine(crashed, tmp_path / "crashed"))

    expected = state_snapshot(redis_client(straight))
    got = state_snapshot(r)
    assert len(expected) > 1000
    assert got.keys() == expected.keys()
    differing = [k for k in expected if expected[k] != got[k]]
    assert not differing, f"{len(differing)} keys differ, e.g. {differing[:3]}"

    straight_ids = {a["action_id"] for a in topic_docs(straight, ACTIONS_TOPIC)}
    crashed_ids = {a["action_id"] for a in topic_docs(crashed, ACTIONS_TOPIC)}
    assert straight_ids and crashed_ids == straight_ids
