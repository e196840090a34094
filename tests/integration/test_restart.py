"""A real engine process killed with -9 mid-run resumes to exactly the state of an uninterrupted run.

With the cart reminder alone, state, action ids and audit decisions after
the restart equal an uninterrupted run's. With caps, quiet hours, a control
group and a conflict group in force (tests/rules/capped.yaml), the actions
sent and the audit after the restart equal an uninterrupted run's too, and
no customer's contact ledger holds more than a cap allows; every
conversion's latest record equals the uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engage.connectors.devstack import DevStack
from engage.connectors.kafka import (ACTIONS_TOPIC, AUDIT_TOPIC, CONVERSIONS_TOPIC, EVENTS_TOPIC,
                                     produce_all)
from engage.simulator.storefront import Storefront

from stack_helpers import redis_client, state_snapshot, topic_docs

EVENTS = 200_000


RULES = Path(__file__).parent.parent / "rules"
WEEK = 7 * 86_400_000


def engine(stack: DevStack, recovery: Path, rules: str = "cart_only.yaml") -> subprocess.Popen:
    env = {**stack.env(), "ENGAGE_METRICS_PORT": "0", "ENGAGE_RULES": str(RULES / rules)}
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


def kill_mid_run(stack: DevStack, recovery: Path, rules: str) -> None:
    """Start an engine, kill -9 it once it has made real progress, run it again to the end."""
    proc = engine(stack, recovery, rules)
    r = redis_client(stack)
    deadline = time.monotonic() + 120
    # Wait for real progress (state written, snapshots taken), then kill mid-stream.
    while r.dbsize() < 500 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)  # past the first snapshots (every 300 ms), well before the end
    assert proc.poll() is None, "the engine finished before it could be killed: raise EVENTS"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert r.dbsize() > 0
    finish(engine(stack, recovery, rules))


def latest_conversions(stack: DevStack) -> dict[str, dict]:
    """Each conversion's newest record (most refunded), as a reader of the topic keeps it."""
    latest: dict[str, dict] = {}
    for rec in topic_docs(stack, CONVERSIONS_TOPIC):
        old = latest.get(rec["conversion_id"])
        if old is None or rec["refunded_cents"] > old["refunded_cents"]:
            latest[rec["conversion_id"]] = rec
    return latest


def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(two_stacks, tmp_path: Path) -> None:
    straight, crashed = two_stacks
    finish(engine(straight, tmp_path / "straight"))
    kill_mid_run(crashed, tmp_path / "crashed", "cart_only.yaml")
    r = redis_client(crashed)

    expected = state_snapshot(redis_client(straight))
    got = state_snapshot(r)
    assert len(expected) > 1000
    assert got.keys() == expected.keys()
    differing = [k for k in expected if expected[k] != got[k]]
    assert not differing, f"{len(differing)} keys differ, e.g. " + "; ".join(
        f"{k}: {expected[k]} != {got[k]}" for k in differing[:4])

    straight_ids = {a["action_id"] for a in topic_docs(straight, ACTIONS_TOPIC)}
    crashed_ids = {a["action_id"] for a in topic_docs(crashed, ACTIONS_TOPIC)}
    assert straight_ids and crashed_ids == straight_ids
    straight_audit = {(a["action_id"], a["reason"]) for a in topic_docs(straight, AUDIT_TOPIC)}
    crashed_audit = {(a["action_id"], a["reason"]) for a in topic_docs(crashed, AUDIT_TOPIC)}
    assert crashed_audit == straight_audit


def test_kill_9_with_caps_in_force_sends_what_an_uninterrupted_run_sends_and_never_exceeds_a_cap(
        two_stacks, tmp_path: Path) -> None:
    stack, straight = two_stacks
    finish(engine(straight, tmp_path / "straight", "capped.yaml"))
    kill_mid_run(stack, tmp_path / "capped", "capped.yaml")
    r = redis_client(stack)
    audit = {(a["action_id"], a["reason"]) for a in topic_docs(stack, AUDIT_TOPIC)}
    assert {"cap", "control", "cooldown", "conflict", "consent"} <= {reason for _, reason in audit}
    assert audit == {(a["action_id"], a["reason"]) for a in topic_docs(straight, AUDIT_TOPIC)}
    sent = topic_docs(stack, ACTIONS_TOPIC)
    # Exactly-once effect: the same actions (ids, channels, variants), each
    # admitted by the ledger once, though some were sent again after the kill.
    expected = {(a["action_id"], a["channel"], a.get("variant"))
                for a in topic_docs(straight, ACTIONS_TOPIC)}
    assert len(expected) > 1000
    assert {(a["action_id"], a["channel"], a.get("variant")) for a in sent} == expected
    # Every action sent is in its customer's ledger (replays resend, never recount),
    # and every 7-day window of the ledger holds at most 2 actions, sms at most 1.
    ledgers = list(r.scan_iter("engage:sent:*"))
    assert len(ledgers) > 100
    admitted = set()
    for key in ledgers:
        scored = r.zrange(key, 0, -1, withscores=True)
        admitted |= {a.decode() for a, _ in scored}
        times = [int(t) for _, t in scored]
        assert all(sum(1 for t in times if s <= t < s + WEEK) <= 2 for s in times), key
        meta = r.hgetall(key.replace(b":sent:", b":sentmeta:"))
        sms = sorted(int(t) for a, t in scored if meta[a].split(b"\x1f")[1] == b"sms")
        assert all(sum(1 for t in sms if s <= t < s + WEEK) <= 1 for s in sms), key
    assert {a["action_id"] for a in sent} <= admitted
    # Attribution resumes too: every conversion's latest record (refunds included)
    # equals the uninterrupted run's, though some were published again after the kill.
    expected_conv = latest_conversions(straight)
    assert len(expected_conv) > 100
    assert any(not c["credited"] for c in expected_conv.values())
    assert latest_conversions(stack) == expected_conv
