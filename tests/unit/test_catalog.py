"""The shipped catalog, playbook by playbook: each rule fires exactly when the domain page says.

Event, absence and schedule playbooks run through `engage replay`; so do the
lifecycle playbooks (declining, lost), on the profile's own stage changes.
Sleeping high value is also fed its change directly, to pin its conditions.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from engage.events import Event
from engage.replay import ReplayResult, replay
from engage.rules.decide import RuleRunner
from engage.rules.loader import CATALOG_DIR, load_rules
from engage.state.customer import CustomerState, StateConfig

from helpers import DAY, HOUR, add, doc, paid, view

CATALOG = load_rules([str(CATALOG_DIR)])
#: 10:00 in Shanghai (the catalog's default zone), outside its quiet hours.
MORNING = int(datetime(2026, 9, 22, 2, 0, tzinfo=timezone.utc).timestamp() * 1000)


def treated(rule_id: str, n: int) -> list[str]:
    """``n`` customer ids that the rule's A/B split does not put in its control group."""
    action = CATALOG.by_id(rule_id).action
    return [c for c in (f"c{i}" for i in range(200)) if action.bucket(rule_id, c) != "control"][:n]


def run(tmp_path: Path, events: list[dict[str, Any]]) -> ReplayResult:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    return replay(str(path), [str(CATALOG_DIR)])


def fired(result: ReplayResult, rule: str) -> list[tuple[str, str]]:
    return sorted((a["user_id"], a["trigger_ts"]) for a in result.actions if a["rule_id"] == rule)


def test_first_order_nudge_three_days_after_registering_without_an_order(tmp_path: Path) -> None:
    result = run(tmp_path, [doc("register", MORNING, "c1", anon="d1"),
                            doc("register", MORNING, "c2", anon="d2"),
                            paid(MORNING + DAY, "c2", "o1", 300.0),
                            view(MORNING + 5 * DAY, "clock")])
    assert fired(result, "first_order_nudge") == [("c1", "2026-09-25T02:00:00.000Z")]


def test_cart_abandonment_reminds_after_24h_unless_an_order_came(tmp_path: Path) -> None:
    left, ordered = treated("cart_abandon_24h", 2)
    result = run(tmp_path, [add(MORNING, left), add(MORNING, ordered),
                            paid(MORNING + 20 * HOUR, ordered, "o1", 499.0),
                            view(MORNING + 3 * DAY, "clock")])
    assert fired(result, "cart_abandon_24h") == [(left, "2026-09-23T02:00:00.000Z")]
    [action] = [a for a in result.actions if a["rule_id"] == "cart_abandon_24h"]
    assert action["variant"] in ("A", "B") and action["payload"]["items"][0]["sku"] == "SOF-1"


def test_size_return_guide_only_for_returns_because_of_size(tmp_path: Path) -> None:
    result = run(tmp_path, [
        doc("order_refunded", MORNING, "c1", order_id="o1", amount=99.0, reason="size"),
        doc("order_refunded", MORNING, "c2", order_id="o2", amount=99.0, reason="quality")])
    assert fired(result, "size_return_guide") == [("c1", "2026-09-22T02:00:00.000Z")]


def test_post_purchase_cross_sell_after_an_order_then_a_week_of_rest(tmp_path: Path) -> None:
    result = run(tmp_path, [paid(MORNING, "c1", "o1", 1200.0, items=[{"sku": "SOFA-1"}]),
                            paid(MORNING + 2 * DAY, "c1", "o2", 40.0),
                            paid(MORNING + 9 * DAY, "c1", "o3", 60.0)])
    assert fired(result, "post_purchase_cross_sell") == [("c1", "2026-09-22T02:00:00.000Z"),
                                                         ("c1", "2026-10-01T02:00:00.000Z")]
    first = result.actions[0]
    assert first["payload"]["order_id"] == "o1" and first["payload"]["items"] == [{"sku": "SOFA-1"}]
    assert [d["reason"] for d in result.suppressed] == ["cooldown"]


def test_birthday_coupon_three_days_before_at_ten_local_time(tmp_path: Path) -> None:
    result = run(tmp_path, [doc("register", MORNING, "c1", birthday="10-10",
                                timezone="Europe/Berlin"),
                            view(MORNING + 30 * DAY, "clock")])
    # 2026-10-07 10:00 in Berlin (summer time) is 08:00 UTC.
    assert fired(result, "birthday_coupon") == [("c1", "2026-10-07T08:00:00.000Z")]


def test_content_nurture_for_prospects_who_keep_looking_at_sofas(tmp_path: Path) -> None:
    views = [view(MORNING + i * HOUR, c) for c in ("prospect", "buyer") for i in range(3)]
    result = run(tmp_path, [paid(MORNING - DAY, "buyer", "o1", 99.0)] + views)
    assert fired(result, "content_nurture_sofa") == [("prospect", "2026-09-22T04:00:00.000Z")]


def test_lifecycle_and_segment_playbooks_react_to_profile_changes() -> None:
    cfg = StateConfig.default()
    runner = RuleRunner(CATALOG, cfg, live=False)
    out: list[Any] = []
    timers: list[Any] = []
    state = CustomerState("c1", cfg)
    state.apply(Event("e1", "order_paid", MORNING - 200 * DAY, "c1", None, None,
                      {"order_id": "o1", "amount": 900.0}), cfg)
    for kind, name, days in (("stage_entered", "active", 0), ("stage_entered", "declining", 1),
                             ("stage_entered", "lost", 60),
                             ("segment_entered", "sleeping_high_value", 61)):
        runner.on_change(state, {"kind": kind, "name": name, "ts": MORNING + days * DAY},
                         timers, out)
    sent = [(d.doc["rule_id"], d.doc["trigger_ts"]) for d in out if "reason" not in d.doc]
    assert sent == [("declining_30d", "2026-09-23T02:00:00.000Z"),
                    ("lost_90d", "2026-11-21T02:00:00.000Z"),
                    ("sleeping_high_value", "2026-11-22T02:00:00.000Z")]


def test_declining_and_lost_playbooks_fire_when_the_profile_says_so(tmp_path: Path) -> None:
    # A customer orders, then goes quiet; others' traffic moves event time on.
    events = [paid(MORNING, "quiet", "o1", 120.0), view(MORNING, "busy")]
    events += [view(MORNING + d * DAY, "busy") for d in range(1, 100, 5)]
    result = run(tmp_path, events)
    stages = [(c["user_id"], c["name"], c["ts"]) for c in result.profile_changes
              if c["kind"] == "stage_entered" and c["user_id"] == "quiet"]
    assert stages == [("quiet", "new", "2026-09-22T02:00:00.000Z"),
                      ("quiet", "declining", "2026-10-22T02:00:00.000Z"),
                      ("quiet", "lost", "2026-12-21T02:00:00.000Z")]
    assert [(a["user_id"], a["rule_id"]) for a in result.actions
            if a["rule_id"] in ("declining_30d", "lost_90d")] == [("quiet", "declining_30d"),
                                                                 ("quiet", "lost_90d")]
