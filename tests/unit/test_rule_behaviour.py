"""What each rule feature does, as a marketer would check it: a rule file and events in, decisions out.

Runs `engage replay` (the production dataflow over a file, in event time,
with the in-memory contact ledger); the same features through the real
broker and Redis are in tests/integration/test_rules_live.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from engage.replay import ReplayResult, replay

from helpers import DAY, HOUR, MIN, T0, add, doc, paid, view

UTC_POLICY = """
policy:
  caps: {global: {max: 2, per: 7d}}
  quiet_hours: {start: "21:00", end: "08:00", timezone: UTC}
  conflict_window: 24h
  arbitration: {mode: defer, max_wait: 2h}
"""
CART_RULE = """
  - id: cart
    trigger: {after: add_to_cart, missing: [order_placed, order_paid], within: 24h}
    when: cart_items > 0
    action: {channel: push, payload: {value: "{{ cart_value }}", text: "{{ cart_items }} item(s)"}}
"""
MONDAY_NOON = T0 - 2 * HOUR - 13 * MIN - 20_000      # 2026-09-21T12:00:00Z


def run(tmp_path: Path, rules: str, events: list[dict[str, Any]], policy: str = UTC_POLICY
        ) -> ReplayResult:
    (tmp_path / "rules.yaml").write_text(policy + "rules:" + rules)
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    return replay(str(tmp_path / "events.jsonl"), [str(tmp_path / "rules.yaml")])


def sent(result: ReplayResult, rule: str | None = None) -> list[dict[str, Any]]:
    return [a for a in result.actions if rule is None or a["rule_id"] == rule]


def refused(result: ReplayResult) -> list[tuple[str, str, str]]:
    return sorted((d["rule_id"], d["user_id"], d["reason"]) for d in result.suppressed)


def test_an_event_rule_fires_only_where_its_condition_holds(tmp_path: Path) -> None:
    rules = """
  - id: sofa_fan
    trigger: {event: product_view, where: 'event.properties.category == "sofa"'}
    when: product_view_24h >= 2
    action: {channel: email, payload: {seen: "{{ product_view_24h }}", cat: "{{ event.properties.category }}"}}
"""
    result = run(tmp_path, rules, [view(MONDAY_NOON, "c1", category="lamp"),
                                   view(MONDAY_NOON + MIN, "c1", category="sofa"),
                                   view(MONDAY_NOON + 2 * MIN, "c2", category="sofa")])
    [action] = sent(result)
    assert action["user_id"] == "c1" and action["channel"] == "email"
    assert action["payload"] == {"seen": 2, "cat": "sofa"}
    assert action["explain"]["values"]["product_view_24h"] == 2
    assert action["trigger_ts"] == "2026-09-21T12:01:00.000Z"
    assert result.suppressed == []


def test_a_cart_left_24h_fires_once_and_an_order_or_a_later_add_replaces_it(tmp_path: Path) -> None:
    result = run(tmp_path, CART_RULE, [
        add(MONDAY_NOON, "left", event_id="e-left"),
        add(MONDAY_NOON, "ordered"), paid(MONDAY_NOON + HOUR, "ordered", "o-1", 10.0),
        add(MONDAY_NOON, "again", event_id="e-first"),
        add(MONDAY_NOON + 2 * HOUR, "again", event_id="e-second"),
        view(MONDAY_NOON + 3 * DAY, "clock"),
    ])
    got = {a["user_id"]: a for a in sent(result)}
    assert set(got) == {"left", "again"}
    assert got["left"]["trigger_event_ids"] == ["e-left"]
    assert got["left"]["trigger_ts"] == "2026-09-22T12:00:00.000Z"
    assert got["again"]["trigger_event_ids"] == ["e-second"]   # the later add's reminder only
    assert got["left"]["payload"] == {"value": 499.0, "text": "1 item(s)"}


def test_quiet_hours_defer_to_the_morning_or_drop(tmp_path: Path) -> None:
    night = MONDAY_NOON + 11 * HOUR        # 23:00 UTC
    deferred = run(tmp_path, CART_RULE, [add(night - DAY, "c1"), view(night + DAY, "clock")])
    [action] = sent(deferred)
    assert action["trigger_ts"] == "2026-09-21T23:00:00.000Z"
    assert action["explain"]["deferred"] == {"reason": "quiet_hours",
                                             "until": "2026-09-22T08:00:00.000Z"}
    assert action["decided_at"] == "2026-09-22T08:00:00.000Z"
    dropped = run(tmp_path, CART_RULE + "    on_quiet: drop\n",
                  [add(night - DAY, "c1"), view(night + DAY, "clock")])
    assert sent(dropped) == [] and refused(dropped) == [("cart", "c1", "quiet_hours")]


def test_an_order_during_the_quiet_hours_cancels_the_deferred_reminder(tmp_path: Path) -> None:
    night = MONDAY_NOON + 11 * HOUR
    rules = CART_RULE + "    cancel_on: [order_paid]\n"
    result = run(tmp_path, rules, [add(night - DAY, "c1"), paid(night + 2 * HOUR, "c1", "o", 5.0),
                                   view(night + DAY, "clock")])
    assert sent(result) == [] and refused(result) == [("cart", "c1", "cancelled")]


def test_an_opt_out_takes_effect_for_actions_not_yet_sent(tmp_path: Path) -> None:
    night = MONDAY_NOON + 11 * HOUR
    opt_out = doc("consent_update", night + HOUR, "c1", channel="push", granted=False)
    result = run(tmp_path, CART_RULE, [add(night - DAY, "c1"), opt_out, add(night - DAY, "c2"),
                                       view(night + DAY, "clock")])
    assert [a["user_id"] for a in sent(result)] == ["c2"]
    assert refused(result) == [("cart", "c1", "consent")]


def test_preferred_channel_follows_the_profile_and_consent(tmp_path: Path) -> None:
    rules = CART_RULE.replace("channel: push", "channel: preferred")
    result = run(tmp_path, rules, [
        doc("profile_update", MONDAY_NOON - HOUR, "c1", preferred_channel="sms"),
        doc("profile_update", MONDAY_NOON - HOUR, "c2", preferred_channel="sms"),
        doc("consent_update", MONDAY_NOON - HOUR, "c2", channel="sms", granted=False),
        add(MONDAY_NOON, "c1"), add(MONDAY_NOON, "c2"), view(MONDAY_NOON + 2 * DAY, "clock")])
    assert {a["user_id"]: a["channel"] for a in sent(result)} == {"c1": "sms", "c2": "push"}


def test_control_group_is_recorded_not_sent_and_variants_split_deterministically(
        tmp_path: Path) -> None:
    rules = CART_RULE + """      variants:
        - {name: A, weight: 1, payload: {angle: low_stock}}
        - {name: B, weight: 1, payload: {angle: coupon}}
      control: 30%
"""
    rules = rules.replace("action: {channel: push, payload: {value: \"{{ cart_value }}\", "
                          "text: \"{{ cart_items }} item(s)\"}}\n", "action:\n      channel: push\n")
    events = [add(MONDAY_NOON, f"c{i}") for i in range(60)] + [view(MONDAY_NOON + 2 * DAY, "x")]
    first, second = run(tmp_path, rules, events), run(tmp_path, rules, events)
    arms = {a["user_id"]: a["variant"] for a in sent(first)}
    control = {d["user_id"] for d in first.suppressed if d["reason"] == "control"}
    assert len(arms) + len(control) == 60 and 8 <= len(control) <= 30
    assert set(arms.values()) == {"A", "B"}
    assert all(a["payload"]["angle"] == {"A": "low_stock", "B": "coupon"}[a["variant"]]
               for a in sent(first))
    assert all(d["variant"] == "control" for d in first.suppressed)
    assert [a["action_id"] for a in sent(second)] == [a["action_id"] for a in sent(first)]


@pytest.mark.parametrize("eligibility, expected", [
    ("once", 1), ("{every: 7d}", 2), ("{cooldown: 3d}", 3), ("always", 5)])
def test_re_eligibility(tmp_path: Path, eligibility: str, expected: int) -> None:
    rules = f"""
  - id: search_follow_up
    trigger: {{event: search}}
    action: {{channel: email}}
    eligibility: {eligibility}
"""
    policy = UTC_POLICY.replace("{global: {max: 2, per: 7d}}", "{global: null}")
    days = [0, 1, 4, 8, 9]      # Mondays... the 1st, 2nd, 5th, 9th and 10th day
    result = run(tmp_path, rules, [doc("search", MONDAY_NOON + d * DAY, "c1", query="sofa")
                                   for d in days], policy)
    assert len(sent(result)) == expected
    assert len(result.suppressed) == 5 - expected
    assert {d["reason"] for d in result.suppressed} <= {"cooldown"}


def test_caps_global_per_channel_and_per_rule_and_transactional_rules_are_exempt(
        tmp_path: Path) -> None:
    rules = """
  - id: search_email
    trigger: {event: search}
    action: {channel: email}
  - id: view_sms
    trigger: {event: product_view}
    action: {channel: sms}
    cap: {max: 1, per: 30d}
  - id: receipt
    transactional: true
    trigger: {event: order_paid}
    action: {channel: email}
"""
    policy = UTC_POLICY.replace("{global: {max: 2, per: 7d}}",
                                "{global: {max: 3, per: 7d}, channels: {email: {max: 2, per: 7d}}}")
    events = [doc("search", MONDAY_NOON + i * HOUR, "c1", query="q") for i in range(3)]
    events += [view(MONDAY_NOON + 3 * HOUR + i * HOUR, "c1") for i in range(2)]
    events += [paid(MONDAY_NOON + 6 * HOUR + i * HOUR, "c1", f"o{i}", 5.0) for i in range(3)]
    result = run(tmp_path, rules, events, policy)
    assert [a["rule_id"] for a in sent(result)] == ["search_email", "search_email", "view_sms",
                                                   "receipt", "receipt", "receipt"]
    assert refused(result) == [("search_email", "c1", "cap"), ("view_sms", "c1", "cap")]


def test_a_conflict_group_keeps_one_offer_per_window(tmp_path: Path) -> None:
    rules = """
  - id: offer_a
    trigger: {event: search}
    action: {channel: push}
    conflict_group: discount
  - id: offer_b
    trigger: {event: favorite}
    action: {channel: email}
    conflict_group: discount
"""
    fav = doc("favorite", MONDAY_NOON + HOUR, "c1", sku="S", category="sofa")
    late_fav = doc("favorite", MONDAY_NOON + 25 * HOUR, "c1", sku="S", category="sofa")
    result = run(tmp_path, rules, [doc("search", MONDAY_NOON, "c1", query="q"), fav, late_fav])
    assert [a["rule_id"] for a in sent(result)] == ["offer_a", "offer_b"]
    assert refused(result) == [("offer_b", "c1", "conflict")]


def test_arbitration_sends_the_higher_priority_first_and_the_other_after_a_wait(
        tmp_path: Path) -> None:
    rules = """
  - id: low
    trigger: {event: order_paid}
    action: {channel: email, priority: 10}
  - id: high
    trigger: {event: order_paid}
    action: {channel: push, priority: 90}
"""
    result = run(tmp_path, rules, [paid(MONDAY_NOON, "c1", "o1", 5.0),
                                   view(MONDAY_NOON + DAY, "clock")])
    first, second = sent(result)
    assert (first["rule_id"], second["rule_id"]) == ("high", "low")
    assert second["explain"]["arbitration"] == {"lost_to": "high"}
    assert second["decided_at"] == "2026-09-21T14:00:00.000Z"      # max_wait 2h later
    dropped = run(tmp_path, rules, [paid(MONDAY_NOON, "c1", "o1", 5.0)],
                  UTC_POLICY.replace("mode: defer", "mode: drop"))
    assert [a["rule_id"] for a in sent(dropped)] == ["high"]
    assert refused(dropped) == [("low", "c1", "conflict")]


def test_birthday_rule_fires_three_days_before_at_ten_local_time(tmp_path: Path) -> None:
    rules = """
  - id: birthday
    trigger: {schedule: {date: birthday, offset: -3d, at: "10:00"}}
    action: {channel: email, payload: {coupon: BDAY}}
    eligibility: {every: 365d}
"""
    events = [doc("register", MONDAY_NOON, "c1", birthday="1990-10-01", timezone="Asia/Shanghai"),
              view(MONDAY_NOON + 40 * DAY, "clock")]
    [action] = sent(run(tmp_path, rules, events))
    # 2026-09-28 10:00 in Shanghai is 02:00 UTC.
    assert action["trigger_ts"] == "2026-09-28T02:00:00.000Z"
    assert action["payload"] == {"coupon": "BDAY"}
