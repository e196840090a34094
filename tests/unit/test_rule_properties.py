"""Invariants of the whole engine over any events and rules: caps always hold, runs always agree."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage.replay import replay

from helpers import DAY, MIN, T0, add, doc, paid, view

WEEK = 7 * DAY
TRIGGERS = [
    "{event: search}",
    "{event: product_view, where: 'event.properties.category == \"sofa\"'}",
    "{after: add_to_cart, missing: [order_paid], within: 6h}",
    "{event: order_paid}",
]


def event(kind: int, customer: str, ts: int) -> dict:
    if kind == 0:
        return doc("search", ts, customer, query="sofa")
    if kind == 1:
        return view(ts, customer, category="sofa")
    if kind == 2:
        return add(ts, customer)
    return paid(ts, customer, f"o-{ts}", 50.0)


RULE = st.tuples(st.sampled_from(range(len(TRIGGERS))), st.integers(0, 100),
                 st.sampled_from(["push", "sms", "email", "preferred"]),
                 st.sampled_from(["always", "{cooldown: 1d}", "once"]),
                 st.sampled_from(["", "offer"]), st.booleans())


def rule_file(rules: list, most: int, arbitration: str, quiet: bool) -> str:
    lines = ["policy:", f"  caps: {{global: {{max: {most}, per: 7d}}, "
             "channels: {sms: {max: 1, per: 7d}}}",
             "  quiet_hours: " + ('{start: "22:00", end: "07:00", timezone: UTC}' if quiet
                                  else '{start: "00:00", end: "00:00"}'),
             f"  arbitration: {{mode: {arbitration}, max_wait: 1h}}", "rules:"]
    for i, (trig, prio, channel, elig, group, deferrable) in enumerate(rules):
        lines += [f"  - id: r{i}", f"    trigger: {TRIGGERS[trig]}",
                  f"    action: {{channel: {channel}, priority: {prio}}}",
                  f"    eligibility: {elig}", f"    on_quiet: {'defer' if deferrable else 'drop'}"]
        if group:
            lines.append(f"    conflict_group: {group}")
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(RULE, min_size=1, max_size=4), most=st.integers(1, 3),
       arbitration=st.sampled_from(["defer", "drop"]), quiet=st.booleans(),
       events=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["c1", "c2", "c3"]),
                                 st.integers(0, 20 * 24 * 60)), min_size=1, max_size=60))
def test_no_customer_ever_gets_more_than_the_cap_and_identical_input_gives_identical_actions(
        rules: list, most: int, arbitration: str, quiet: bool, events: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rules_path, events_path = Path(tmp) / "rules.yaml", Path(tmp) / "events.jsonl"
        rules_path.write_text(rule_file(rules, most, arbitration, quiet))
        docs = [event(k, c, T0 + m * MIN) for k, c, m in events]
        docs.append(view(T0 + 30 * DAY, "clock"))      # let every timer come due
        events_path.write_bytes(b"\n".join(orjson.dumps(d) for d in docs))
        first = replay(str(events_path), [str(rules_path)])
        second = replay(str(events_path), [str(rules_path)])
    assert [a["action_id"] for a in first.actions] == [a["action_id"] for a in second.actions]
    assert [(d["action_id"], d["reason"]) for d in first.suppressed] == \
        [(d["action_id"], d["reason"]) for d in second.suppressed]
    assert len({a["action_id"] for a in first.actions}) == len(first.actions)
    by_customer: dict[str, list[tuple[int, str]]] = {}
    for a in first.actions:
        at = int(datetime.fromisoformat(a["decided_at"].replace("Z", "+00:00")).timestamp() * 1000)
        by_customer.setdefault(a["user_id"], []).append((at, a["channel"]))
    for customer, sends in by_customer.items():
        times = sorted(t for t, _ in sends)
        assert all(sum(1 for t in times if s <= t < s + WEEK) <= most for s in times), customer
        sms = sorted(t for t, ch in sends if ch == "sms")
        assert all(sum(1 for t in sms if s <= t < s + WEEK) <= 1 for s in sms), customer
