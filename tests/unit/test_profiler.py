"""The profile keeper's edges: time-driven tags, moments shared by an event and a timer,
tag definitions removed on reload, names that must not become sets, and erasure on shared devices."""

from __future__ import annotations

from pathlib import Path

import orjson

from engage.events import Event
from engage.operators.records import Forget, Merge, Tick
from engage.operators.shards import IdentityShard, ShardConfig
from engage.replay import replay
from engage.rules.decide import iso
from engage.rules.loader import load_text
from engage.rules.model import RuleSet
from engage.rules.profiler import Profiler
from engage.state.customer import CustomerState, StateConfig
from engage.state.profile import ProfileConfig

from helpers import DAY, MIN, T0, doc, login, paid, view

CFG = StateConfig.default()


def run(tmp_path: Path, rules: str, events: list[dict]) -> list[dict]:
    (tmp_path / "rules.yaml").write_text(rules)
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    return replay(str(tmp_path / "events.jsonl"), [str(tmp_path / "rules.yaml")]).profile_changes


def changes_of(changes: list[dict], user: str) -> list[tuple[str, str, str]]:
    return [(c["kind"], c["name"], c["ts"]) for c in changes if c["user_id"] == user]


def test_a_tag_on_a_day_count_turns_on_the_day_it_becomes_true(tmp_path: Path) -> None:
    rules = "tags:\n  - {id: quiet_10d, when: days_since_last_visit >= 10}\n"
    events = [view(T0, "c1")] + [view(T0 + d * DAY, "clock") for d in range(1, 40, 7)]
    got = changes_of(run(tmp_path, rules, events), "c1")
    assert ("tag_added", "quiet_10d", "2026-10-01T14:13:20.000Z") in got   # T0 + 10 days


def test_an_event_at_the_very_moment_the_profile_was_due_does_not_hide_the_change(
        tmp_path: Path) -> None:
    # A first order keeps the customer "new" for 30 days; a view lands exactly then.
    events = [paid(T0, "c1", "o1", 50.0), view(T0 + 30 * DAY, "c1"),
              view(T0 + 40 * DAY, "clock")]
    got = changes_of(run(tmp_path, "rules: []\n", events), "c1")
    assert ("stage_entered", "active", "2026-10-21T14:13:20.000Z") in got  # T0 + 30 days


def test_tags_whose_definition_was_removed_are_dropped_at_the_next_look() -> None:
    with_tag = load_text("tags:\n  - {id: viewer, when: product_view_24h >= 1}\n", "t.yaml", CFG)
    state = CustomerState("c1", CFG)
    e = Event("e1", "product_view", T0, "c1", None, None, {"sku": "S", "category": "sofa"})
    state.apply(e, CFG)
    before = Profiler(RuleSet((), tags=with_tag.tags), CFG, ProfileConfig())
    before.refresh(state, T0, {"event_id": "e1"}, e)
    assert "viewer" in state.derived["tags"]
    after = Profiler(RuleSet(()), CFG, ProfileConfig())   # the reload removed it
    changes, _ = after.refresh(state, T0 + MIN, {"time": True})
    assert "tags" not in state.derived
    assert [(c["kind"], c["name"]) for c in changes] == [("tag_removed", "viewer")]


def test_names_that_would_break_membership_sets_never_become_preference_tags() -> None:
    prefs = load_text("preferences: {min_score: 1}\n", "p.yaml", CFG).preferences
    profiler = Profiler(RuleSet((), preferences=prefs), CFG, ProfileConfig())
    state = CustomerState("c1", CFG)
    for i, category in enumerate(["x\x1fstage:lost", "a{b}", "sofa\n", "y" * 65, "sofa"]):
        e = Event(f"e{i}", "favorite", T0 + i, "c1", None, None, {"sku": "S", "category": category})
        profiler.refresh(state, e.ts, {"event_id": e.event_id}, e)
    assert [t for t in state.derived["tags"] if t.startswith("likes:")] == ["likes:sofa"]


def test_an_erased_customers_device_still_lets_another_customer_log_in() -> None:
    cfg = ShardConfig(state=CFG, lateness_ms=1000, idle_after_s=60, lineage="L",
                      sources=((0, -1),))
    shard = IdentityShard(cfg, None)
    shard.on_batch([Event("l1", "login", T0, "c1", "d1", None, {}, 0, 1), Tick(0, T0 + 2000)])
    shard.on_batch([Forget("c1", "r1")])
    out, _ = shard.on_batch([Event("v1", "product_view", T0 + 10, None, "d1", None,
                                   {"sku": "S", "category": "sofa"}, 0, 2),
                             Event("l2", "login", T0 + 20, "c2", "d1", None, {}, 0, 3),
                             Event("v2", "product_view", T0 + 30, None, "d1", None,
                                   {"sku": "S", "category": "rug"}, 0, 4),
                             Tick(0, T0 + 5000)])
    passed = [(type(x).__name__, getattr(x, "event_id", None), getattr(x, "user_id", None))
              for x in out if type(x) in (Event, Merge)]
    # c1's anonymous use stays erased; c2's login, and what follows it, count for c2.
    assert passed == [("Merge", None, None), ("Event", "l2", "c2"), ("Event", "v2", "c2")]
    assert [x.customer for x in out if type(x) is Merge] == ["c2"]


def test_transitions_of_one_moment_compete_in_one_arbitration() -> None:
    from engage.rules.decide import RuleRunner  # noqa: PLC0415

    rules = load_text("""
policy: {caps: {global: null}, quiet_hours: {start: "00:00", end: "00:00"},
         arbitration: {mode: drop}}
rules:
  - {id: win_back, trigger: {transition: {stage_entered: lost}}, action: {channel: email, priority: 60}}
  - {id: vip_wake, trigger: {transition: {segment_entered: sleeping_high_value}},
     action: {channel: email, priority: 80}}
""", "r.yaml", CFG)
    runner = RuleRunner(RuleSet(rules.rules, rules.policy), CFG, live=False)
    state = CustomerState("c1", CFG)
    out: list = []
    # One look at the profile found both: the customer went lost and sleeping at once.
    runner.on_changes(state, [{"kind": "stage_entered", "name": "lost", "ts": T0},
                              {"kind": "segment_entered", "name": "sleeping_high_value",
                               "ts": T0}], [], out)
    assert sorted((d.doc["rule_id"], d.doc.get("reason")) for d in out) == [
        ("vip_wake", None), ("win_back", "conflict")]


PREFERENCES = """preferences:
  half_life: 30d
  min_score: 4
  top_categories: 3
  top_styles: 2
  price_bands: {budget: 0, mid: 200, premium: 1000}
"""


def test_what_a_device_browsed_before_login_becomes_the_customers_preference(
        tmp_path: Path) -> None:
    browsing = [view(T0 + i * MIN, anon="d-1", category="bed") for i in range(6)]
    login_at = T0 + 60 * MIN
    got = run(tmp_path, PREFERENCES, browsing + [login(login_at, "c1", "d-1"),
                                                 view(T0 + DAY, "clock", category="lamp")])
    liked = [(c["kind"], c["ts"], c["cause"]) for c in got
             if c["user_id"] == "c1" and c["name"] == "likes:bed"]
    assert liked == [("tag_added", iso(login_at), {"merged": "d-1"})]
    # The same browsing never linked to anyone makes nobody's preference.
    alone = run(tmp_path, PREFERENCES, browsing + [view(T0 + DAY, "clock", category="lamp")])
    assert not [c for c in alone if c["name"] == "likes:bed"]


def test_device_and_customer_scores_add_up_at_the_merge() -> None:
    loaded = load_text(PREFERENCES, "prefs.yaml", CFG)
    profiler = Profiler(RuleSet((), preferences=loaded.preferences), CFG, ProfileConfig())
    customer, device = CustomerState("c1", CFG), CustomerState("~d-1", CFG)
    for i in range(3):
        profiler.learn(customer, Event(f"c{i}", "product_view", T0 + i, "c1", None, "web",
                                       {"category": "bed"}))
        profiler.learn(device, Event(f"d{i}", "product_view", T0 + i, None, "d-1", "web",
                                     {"category": "bed"}))
    alone = customer.derived["prefs"]["likes:bed"]
    profiler.merge_prefs(customer, device)
    # Twice the score: one more in log2, to the rounding.
    assert abs(customer.derived["prefs"]["likes:bed"] - (alone + 1.0)) <= 0.011
