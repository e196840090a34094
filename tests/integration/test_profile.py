"""A year of storefront history through Kafka and Redis: the live profile equals a brute-force batch.

The brute force below is written from the definitions (README, "Profile"),
in plain Python over the event file, sharing no code with the engine: it
attributes device events to the customer whose login linked the device,
and computes R, F, M, stage, tier and segment as of the last event.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from engage.config import Settings
from engage.connectors.kafka import ACTIONS_TOPIC, EVENTS_TOPIC, PROFILE_TOPIC, produce_all
from engage.profile_view import build_view
from engage.replay import replay
from engage.rules.loader import CATALOG_DIR
from engage.simulator.storefront import Storefront
from engage.state.keys import state_key
from engage.state.profile import memberships
from engage.connectors.redis_store import read_document

from stack_helpers import redis_client, run_engine, settings_for, topic_docs

pytestmark = pytest.mark.integration
DAY = 86_400_000
EVENTS = 40_000
START = 1_757_000_000_000   # 2025-09-04


def brute_force(docs: list[dict[str, Any]], at: int) -> dict[str, dict[str, Any]]:
    """R, F, M, stage, tier and segment of every customer as of ``at``."""
    linked: dict[str, str] = {}
    for d in sorted(docs, key=lambda d: d["ts"]):
        if d["type"] in ("login", "register") and d["user_id"] and d["anonymous_id"]:
            linked.setdefault(d["anonymous_id"], d["user_id"])
    last_visit: dict[str, int] = defaultdict(int)
    paid: dict[str, dict[str, tuple[int, float]]] = defaultdict(dict)
    refunds: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for d in docs:
        customer = d["user_id"] or linked.get(d["anonymous_id"])
        if customer is None:
            continue
        last_visit[customer] = max(last_visit[customer], d["ts"])
        props = d["properties"]
        if d["type"] == "order_paid":
            paid[customer].setdefault(props["order_id"], (d["ts"], props["amount"]))
        elif d["type"] == "order_refunded":
            refunds[customer].append((d["ts"], props["amount"]))
    today = at // DAY

    def in_year(ts: int) -> bool:          # the 365-day window slides by the day
        return today - 365 < ts // DAY <= today

    out = {}
    for customer, visited in last_visit.items():
        orders = sorted(paid[customer].values())
        year = [amount for ts, amount in orders if in_year(ts)]
        frequency = len(year)
        monetary = sum(year) - sum(a for ts, a in refunds[customer] if in_year(ts))
        idle = at - visited
        if idle >= 90 * DAY:
            stage = "lost"
        elif idle >= 30 * DAY:
            stage = "declining"
        elif not orders:
            stage = "prospect"
        elif at - orders[0][0] < 30 * DAY:
            stage = "new"
        else:
            stage = "active"
        tier = "regular"
        if monetary >= 1000 and frequency >= 2:
            tier = "silver"
        if monetary >= 5000 and frequency >= 4:
            tier = "gold"
        row: dict[str, Any] = {"stage": stage, "tier": tier, "rfm": None, "segment": None}
        if orders:
            days = (at - orders[-1][0]) // DAY
            r = 5 if days <= 30 else 4 if days <= 90 else 3 if days <= 180 else 2 if days <= 365 else 1
            f = 1 + sum(frequency >= x for x in (2, 3, 4, 6))
            m = 1 + sum(round(monetary, 2) >= x for x in (200, 500, 1000, 3000))
            row["rfm"] = (days, frequency, round(monetary, 2), r, f, m)
            high = (r >= 3, f >= 3, m >= 3)
            row["segment"] = {
                (True, True, True): "core_value", (True, True, False): "active_potential",
                (False, True, True): "sleeping_high_value", (False, False, False): "lost",
                (True, False, True): "develop_high_value",
                (False, False, True): "win_back_high_value",
                (True, False, False): "develop_new", (False, True, False): "retain_regular"}[high]
        out[customer] = row
    return out


@pytest.fixture(scope="module")
def year(tmp_path_factory) -> tuple[list[tuple[bytes, bytes]], list[dict[str, Any]], Path]:
    # A year that ended before today: events from the future are dead letters.
    records = list(Storefront(seed=5, customers=400, mean_gap_ms=820_000,
                              start_ms=START).events(EVENTS))
    docs = []
    for key, value in records:
        if key == b"c-bad":
            continue   # the simulator's malformed records (dead letters)
        try:
            docs.append(orjson.loads(value))
        except orjson.JSONDecodeError:
            continue
    assert (max(d["ts"] for d in docs) - min(d["ts"] for d in docs)) > 365 * DAY
    path = tmp_path_factory.mktemp("year") / "events.jsonl"
    path.write_bytes(b"\n".join(v for _, v in records) + b"\n")
    return records, docs, path


def test_a_year_replayed_gives_the_profile_a_brute_force_batch_computes(stack, year) -> None:
    records, docs, path = year
    produce_all(stack.bootstrap, EVENTS_TOPIC, records)
    # The shipped catalog: its tags and preferences, and the playbooks reacting to changes.
    run_engine(stack, rules=str(CATALOG_DIR))
    at = max(d["ts"] for d in docs)
    expected = brute_force(docs, at)
    settings = settings_for(stack, rules=str(CATALOG_DIR))
    r = redis_client(stack)
    stages: dict[str, int] = defaultdict(int)
    for customer, want in expected.items():
        doc = read_document(r, state_key(customer))
        derived = doc["derived"]
        # What the engine stored, event by event and timer by timer...
        assert derived["stage"][0] == want["stage"], customer
        assert derived["tier"][0] == want["tier"], customer
        assert (derived.get("segment") or [None])[0] == want["segment"], customer
        # ...and the values as of the last event (recency keeps counting).
        view = build_view(settings, customer, doc, at)
        assert view["stage"]["name"] == want["stage"] and view["tier"]["name"] == want["tier"]
        if want["rfm"] is None:
            assert view["rfm"] is None, customer
        else:
            rfm = view["rfm"]
            got = (rfm["recency_days"], rfm["frequency"], rfm["monetary"], rfm["scores"]["r"],
                   rfm["scores"]["f"], rfm["scores"]["m"])
            assert got == want["rfm"], customer
        stages[want["stage"]] += 1
    # The history exercises every stage, and the brute force saw every customer the engine did.
    assert set(stages) == {"prospect", "new", "active", "declining", "lost"}, stages
    assert len(expected) == sum(1 for _ in r.scan_iter("engage:c:{c-*"))

    # The change stream: the same changes at the same event times as `engage replay`.
    live = [(c["change_id"], c["ts"], c["from"], c["to"]) for c in topic_docs(stack, PROFILE_TOPIC)]
    replayed = replay(str(path), settings.rules, settings)
    assert sorted(live) == sorted((c["change_id"], c["ts"], c["from"], c["to"])
                                  for c in replayed.profile_changes)
    kinds = {c["kind"] for c in replayed.profile_changes}
    assert {"stage_entered", "tier_upgraded", "segment_entered", "tag_added", "tag_removed"} <= kinds
    assert any(c.get("reactivated") for c in replayed.profile_changes)
    # Playbooks on transitions fired from the profile's own changes.
    fired = {a["rule_id"] for a in topic_docs(stack, ACTIONS_TOPIC)}
    assert {"declining_30d", "lost_90d"} <= fired

    # Membership sets hold exactly the customers whose profile says so.
    members: dict[str, set[str]] = defaultdict(set)
    for key in r.scan_iter("engage:c:{c-*"):
        doc = read_document(r, key)
        for m in filter(None, memberships(doc.get("derived", {})).split("\x1f")):
            members[m].add(doc["id"])
    stored = {k.decode()[len("engage:members:{"):-1]: {c.decode() for c in r.smembers(k)}
              for k in r.scan_iter("engage:members:*")}
    assert stored == dict(members)
    assert any(m.startswith("tag:likes:") for m in stored) and "tag:high_intent" in stored


def test_relative_rfm_scores_spread_the_customers_over_quintiles(year) -> None:
    _, docs, path = year
    settings = Settings.load({"recovery_dir": "", "metrics_port": 0, "rules": "",
                              "rfm_scoring": "population"}, {})
    result = replay(str(path), [str(Path(__file__).parent.parent / "rules" / "cart_only.yaml")],
                    settings)
    segments = {c["name"] for c in result.profile_changes if c["kind"] == "segment_entered"}
    # Against the population, high and low split every measure: all eight segments occur,
    # where fixed thresholds leave some empty on this history.
    assert segments == {"core_value", "active_potential", "sleeping_high_value", "lost",
                        "develop_high_value", "win_back_high_value", "develop_new",
                        "retain_regular"}
