"""Rules through the real broker and Redis: a rule file and events in, actions, audit and metrics out."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from engage.connectors.kafka import ACTIONS_TOPIC, AUDIT_TOPIC
from engage.monitoring import metrics

from helpers import DAY, HOUR, MIN, T0, add, doc, paid, view
from engine_process import until
from stack_helpers import produce, run_engine, topic_docs

pytestmark = pytest.mark.integration
NOON = T0 - 2 * HOUR - 13 * MIN - 20_000      # 2026-09-21T12:00:00Z

RULES = """
policy:
  caps: {global: {max: 2, per: 7d}, channels: {sms: {max: 1, per: 7d}}}
  quiet_hours: {start: "21:00", end: "08:00", timezone: UTC}
  conflict_window: 24h
rules:
  - id: cart
    trigger: {after: add_to_cart, missing: [order_paid], within: 24h}
    when: cart_items > 0
    action: {channel: sms, payload: {value: "{{ cart_value }}"}}
    cancel_on: [order_paid]
  - id: searcher
    trigger: {event: search}
    action: {channel: email, payload: {q: "{{ event.properties.query }}"}}
  - id: receipt
    transactional: true
    trigger: {event: order_paid}
    action: {channel: email}
"""


def sent_total(rule: str, channel: str) -> float:
    return metrics.ACTIONS_SENT.labels(rule, channel)._value.get()


def test_rules_caps_quiet_hours_and_audit_through_kafka_and_redis(stack, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    before = sent_total("searcher", "email")
    produce(stack, [
        add(NOON, "c1"),                                   # reminder due 12:00 next day: sent (sms)
        add(NOON + HOUR, "c2"), paid(NOON + 2 * HOUR, "c2", "o1", 20.0),   # order: no reminder
        add(NOON + 10 * HOUR, "c3"),                       # due 22:00 next day: quiet, until 08:00
        *[doc("search", NOON + i * MIN, "c4", query=f"q{i}") for i in range(3)],  # 3rd: capped
        view(NOON + 3 * DAY, "clock"),
    ])
    run_engine(stack, rules=str(rules))
    actions = {(a["rule_id"], a["user_id"]): a for a in topic_docs(stack, ACTIONS_TOPIC)}
    audit = sorted((a["rule_id"], a["user_id"], a["reason"]) for a in topic_docs(stack, AUDIT_TOPIC))
    assert set(actions) == {("cart", "c1"), ("cart", "c3"), ("receipt", "c2"), ("searcher", "c4")}
    assert actions[("cart", "c1")]["channel"] == "sms"
    assert actions[("cart", "c1")]["payload"] == {"value": 499.0}
    assert actions[("cart", "c3")]["explain"]["deferred"]["until"] == "2026-09-23T08:00:00.000Z"
    searches = [a for a in topic_docs(stack, ACTIONS_TOPIC) if a["rule_id"] == "searcher"]
    assert [a["payload"]["q"] for a in searches] == ["q0", "q1"]
    assert audit == [("searcher", "c4", "cap")]
    assert sent_total("searcher", "email") - before == 2
    # The ledger in Redis holds what was sent, by event time, per customer.
    r = redis.Redis.from_url(stack.redis_url)
    assert r.zcard("engage:sent:{c4}") == 2 and r.zcard("engage:sent:{c1}") == 1
    assert r.zcard("engage:sent:{c2}") == 0            # transactional: not counted against caps


def test_a_bad_rule_file_stops_the_engine_before_it_starts(stack, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.replace("channel: sms", "channel: pigeon"))
    with pytest.raises(ValueError, match=r"rules.yaml:10: channel must be one of"):
        run_engine(stack, rules=str(rules))


def test_backfill_rebuilds_state_and_decides_nothing(stack, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    produce(stack, [add(NOON, "c1"), doc("search", NOON, "c4", query="q"),
                    view(NOON + 3 * DAY, "clock")])
    run_engine(stack, rules=str(rules), backfill=True)
    assert topic_docs(stack, ACTIONS_TOPIC) == [] and topic_docs(stack, AUDIT_TOPIC) == []
    r = redis.Redis.from_url(stack.redis_url)
    assert r.exists("engage:c:{c1}") and r.exists("engage:c:{c4}")
    assert not r.exists("engage:sent:{c4}")


RELOADABLE = """
policy: {caps: {global: null}, quiet_hours: {start: "00:00", end: "00:00"}}
rules:
  - id: searcher
    trigger: {event: search}
    action: {channel: email, payload: {copy: "VERSION"}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int, sample: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return -1.0
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_running_engine_reloads_changed_rules_and_refuses_a_broken_file(
        stack, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RELOADABLE.replace("VERSION", "one"))
    port = _free_port()
    env = {**os.environ, **stack.env(), "ENGAGE_RULES": str(rules), "ENGAGE_METRICS_PORT": str(port),
           "ENGAGE_RULES_RELOAD_INTERVAL": "200ms"}
    proc = subprocess.Popen([sys.executable, "-m", "engage.cli", "run", "--no-recovery"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def search_then_time_passes(at: int, customer: str) -> None:
        # Others' later traffic on every partition moves event time past the search.
        produce(stack, [doc("search", at, customer, query="sofa")]
                + [view(at + 10 * MIN, f"clock-{i}") for i in range(20)])

    def copies() -> dict[str, tuple[str, str]]:
        return {a["user_id"]: (a["payload"]["copy"], a["rule_version"])
                for a in topic_docs(stack, ACTIONS_TOPIC)}

    try:
        until(lambda: _scrape(port, "engage_rules_loaded") == 1, "the engine to start", timeout=60)
        search_then_time_passes(T0, "c1")
        until(lambda: "c1" in copies(), "the first action", timeout=60)

        # A broken save: refused whole, metered and logged; version one runs on.
        rules.write_text(RELOADABLE.replace("VERSION", "two").replace("email", "pigeon"))
        until(lambda: _scrape(port, 'engage_rule_reloads_total{outcome="refused"}') == 1,
               "the refusal", timeout=60)
        search_then_time_passes(T0 + HOUR, "c2")
        until(lambda: "c2" in copies(), "an action under the old rules", timeout=60)

        # The fix: picked up, and the next action carries the new version.
        rules.write_text(RELOADABLE.replace("VERSION", "two"))
        until(lambda: _scrape(port, 'engage_rule_reloads_total{outcome="ok"}') == 1, "the reload",
              timeout=60)
        search_then_time_passes(T0 + 2 * HOUR, "c3")
        until(lambda: "c3" in copies(), "an action under the new rules", timeout=60)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    got = copies()
    assert got["c1"] == got["c2"] and got["c1"][0] == "one"
    assert got["c3"][0] == "two" and got["c3"][1] != got["c1"][1]
    log = out.decode()
    assert proc.returncode == 0, log[-2000:]
    assert "rule reload refused; the previous version keeps running" in log
    assert "rules.yaml:6: channel must be one of" in log
