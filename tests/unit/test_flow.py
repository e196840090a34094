"""The dataflow's behaviour with in-memory connectors (pure logic, no servers)."""

from __future__ import annotations

from typing import Any

import orjson
from bytewax.testing import TestingSink, run_main

from engage.config import Settings
from engage.connectors.memory import ListSource
from engage.flows.engagement import build_flow
from engage.monitoring import metrics
from engage.operators.records import Emit, StateWrites
from engage.state.keys import link_key, state_key

from helpers import DAY, HOUR, MIN, T0, add, counters, doc, login, paid, raw, rule_book, view


def run(events: list[Any], partition_of: Any = None, finish_on_eof: bool = True,
        **settings: Any) -> tuple[dict, list[Emit]]:
    """Run the flow over events; return the final Redis keys and the Kafka messages."""
    records = []
    for i, e in enumerate(events):
        value = e if isinstance(e, bytes) else raw(e)
        part = partition_of(e) if partition_of else 0
        records.append((part, i, b"k", value))
    writes: list[Any] = []
    emits: list[Emit] = []
    s = Settings.load({"lateness": "10m", **settings}, {})
    run_main(build_flow(s, ListSource(records, batch=2), TestingSink(writes), TestingSink(emits),
                        lineage="test", finish_on_eof=finish_on_eof,
                        now=lambda: (T0 + 400 * DAY) / 1000, rules=rule_book()))
    store: dict[str, Any] = {}
    for batch in writes:
        assert type(batch) is StateWrites
        for key, value in batch.writes.items():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value if key.startswith("engage:link") else orjson.loads(value)
    return store, emits


def actions(emits: list[Emit], topic: str = "engage.actions") -> list[dict]:
    return [orjson.loads(e.value) for e in emits if e.topic == topic]


def test_device_history_is_merged_into_the_customer_at_login() -> None:
    store, _ = run([view(T0, anon="d1"), add(T0 + MIN, anon="d1"), login(T0 + 2 * MIN, "c1", "d1"),
                    view(T0 + 3 * MIN, anon="d1", category="lamp")])
    c1 = store[state_key("c1")]
    assert c1["lifetime"] == {"product_view": 2, "add_to_cart": 1, "login": 1}
    assert c1["anon_ids"] == ["d1"] and "SOF-1" in c1["cart"]["lines"]
    assert state_key("~d1") not in store  # the device's own state moved, not copied
    assert store[link_key("d1")] == b"c1"


def test_a_shared_device_links_no_more_than_the_limit() -> None:
    before = metrics.IDENTITY_LINKS.labels("refused")._value.get()
    events = [login(T0 + i * MIN, f"c{i}", "kiosk") for i in range(4)]
    events.append(view(T0 + 10 * MIN, anon="kiosk"))
    store, _ = run(events, max_links_per_device=2)
    assert metrics.IDENTITY_LINKS.labels("refused")._value.get() - before == 2
    assert store[link_key("kiosk")] == b"c1"  # the last accepted link keeps the device
    assert store[state_key("c1")]["lifetime"] == {"login": 1, "product_view": 1}
    assert "anon_ids" not in store[state_key("c3")]  # refused: the login counts, no merge


def test_cart_left_24h_gives_one_action_in_contract_format() -> None:
    _, emits = run([add(T0, user="c1", event_id="e-add"), view(T0 + 25 * HOUR, user="c2")])
    [action] = actions(emits)
    assert action["rule_id"] == "cart_abandon_24h" and action["user_id"] == "c1"
    assert action["trigger_event_ids"] == ["e-add"] and action["channel"] == "push"
    assert action["trigger_ts"] == "2026-09-22T14:13:20.000Z"
    assert set(action) >= {"action_id", "rule_version", "payload", "decided_at", "explain"}
    assert action["payload"]["items"][0]["sku"] == "SOF-1"


def test_the_same_trigger_gives_the_same_action_id_on_replay() -> None:
    events = [add(T0, user="c1", event_id="e-add"), view(T0 + 25 * HOUR, user="c2")]
    first = actions(run(events)[1])
    second = actions(run(events)[1])
    assert [a["action_id"] for a in first] == [a["action_id"] for a in second]


def test_an_order_within_24h_means_no_reminder() -> None:
    _, emits = run([add(T0, user="c1"), paid(T0 + 3 * HOUR, "c1", "o1", 499.0),
                    view(T0 + 30 * HOUR, user="c2")])
    assert actions(emits) == []


def test_a_late_order_within_the_allowed_lateness_still_cancels() -> None:
    # The order happened at 23h59 but reaches us after events from 24h05.
    events = [add(T0, user="c1"), view(T0 + 24 * HOUR + 5 * MIN, user="c2"),
              paid(T0 + 24 * HOUR - MIN, "c1", "o1", 499.0), view(T0 + 30 * HOUR, user="c2")]
    assert actions(run(events)[1]) == []


def test_an_order_later_than_the_lateness_cannot_cancel_and_counts_in_lifetime_only() -> None:
    events = [add(T0, user="c1"), view(T0 + 25 * HOUR, user="c2"),
              paid(T0 + 23 * HOUR, "c1", "o1", 499.0), view(T0 + 30 * HOUR, user="c2")]
    store, emits = run(events)
    assert len(actions(emits)) == 1
    c1 = store[state_key("c1")]
    assert c1["orders"]["count"] == 1 and c1["late"] == 1
    assert "order_paid" not in counters(c1)  # not in any window


def test_a_device_cart_gets_its_reminder_after_the_customer_logs_in() -> None:
    _, emits = run([add(T0, anon="d1", event_id="e-add"), login(T0 + HOUR, "c1", "d1"),
                    view(T0 + 26 * HOUR, user="c2")])
    [action] = actions(emits)
    assert action["user_id"] == "c1" and action["trigger_event_ids"] == ["e-add"]


def test_no_channel_with_consent_means_an_audit_record_not_an_action() -> None:
    events = [doc("consent_update", T0 - 1, "c1", None, channel="all", granted=False),
              add(T0, user="c1"), view(T0 + 25 * HOUR, user="c2")]
    _, emits = run(events)
    assert actions(emits) == []
    [audit] = actions(emits, "engage.audit")
    assert audit["reason"] == "consent" and audit["user_id"] == "c1"


def test_the_watermark_waits_for_the_slowest_partition() -> None:
    # Partition 1 has only reached T0 + 1h: the 24 h timer of partition 0's
    # customer must not fire, however far partition 0 has come...
    parts = {"slow": 1}
    events = [add(T0, user="c1"), view(T0 + HOUR, user="slow"), view(T0 + 40 * HOUR, user="c2")]
    _, emits = run(events, partition_of=lambda e: parts.get(e["user_id"], 0), finish_on_eof=False,
                   idle_partition_after="1h")
    assert actions(emits) == []
    # ...until partition 1 moves past the due time plus the lateness too.
    events.append(view(T0 + 30 * HOUR, user="slow"))
    _, emits = run(events, partition_of=lambda e: parts.get(e["user_id"], 0), finish_on_eof=False,
                   idle_partition_after="1h")
    [action] = actions(emits)
    assert action["trigger_ts"] == "2026-09-22T14:13:20.000Z"


def test_invalid_records_go_to_the_dead_letter_topic_and_the_flow_goes_on() -> None:
    store, emits = run([b"{oops", doc("teleport", T0, "c1"), view(T0, user="c1")])
    dead = [e for e in emits if e.topic == "engage.dlq"]
    assert [dict(e.headers)["engage.reason"] for e in dead] == [b"invalid_json", b"unknown_type"]
    assert dead[0].value == b"{oops"
    assert store[state_key("c1")]["lifetime"] == {"product_view": 1}


def test_inactive_customers_expire_in_event_time() -> None:
    store, _ = run([view(T0, user="old"), view(T0 + 3 * DAY, user="new")], inactive_ttl="2d",
                   models=False)   # models need the TTL to outlast two churn horizons
    assert state_key("old") not in store and state_key("new") in store
