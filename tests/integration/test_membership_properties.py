"""Property: membership sets in Redis always match the customers' own profiles.

Any mix of device views, logins that merge a device's history into a
customer, orders (tiers, segments) and erasures, through the real dataflow
and the real Redis writer script: afterwards every ``engage:members:{X}``
holds exactly the customers whose stored profile says X, and an erased
customer is in no set and has no document.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import orjson
import pytest
from bytewax.testing import run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage.config import Settings
from engage.connectors.devstack import DevStack
from engage.connectors.memory import ListSink, ListSource
from engage.connectors.redis_store import RedisStateSink, read_document
from engage.flows.engagement import build_flow
from engage.rules.book import RuleBook
from engage.rules.loader import load_rules
from engage.state.keys import MEMBERS_INDEX
from engage.state.profile import memberships

from helpers import DAY, HOUR, T0, login, paid, view
from stack_helpers import redis_client

pytestmark = pytest.mark.integration

TAGS = """
tags:
  - {id: browser, when: product_view_24h >= 2}
  - {id: buyer, when: orders >= 1}
  - {id: big, when: spend_30d >= 1500}
preferences: {half_life: 1d, min_score: 2, top_categories: 1}
"""
CUSTOMERS = ["c1", "c2", "c3"]
DEVICES = ["d1", "d2", "d3"]
STEP = st.one_of(
    st.tuples(st.just("view"), st.sampled_from(CUSTOMERS + DEVICES), st.sampled_from(["sofa", "rug"])),
    st.tuples(st.just("login"), st.sampled_from(CUSTOMERS), st.sampled_from(DEVICES)),
    st.tuples(st.just("paid"), st.sampled_from(CUSTOMERS), st.sampled_from([100.0, 900.0, 2000.0])),
    st.tuples(st.just("forget"), st.sampled_from(CUSTOMERS), st.none()),
)


@pytest.fixture(scope="module")
def redis_stack():
    with DevStack(with_kafka=False) as s:
        yield s


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    path = tmp_path_factory.mktemp("tags") / "tags.yaml"
    path.write_text(TAGS)
    return RuleBook.fixed(load_rules([str(path)]))


def record(n: int, doc: dict) -> tuple[int, int, bytes, bytes]:
    key = (doc["user_id"] or doc["anonymous_id"]).encode()
    return (zlib.crc32(key) % 2, n, key, orjson.dumps(doc))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=1, max_size=25), gaps=st.lists(st.integers(1, 40), min_size=25,
                                                                   max_size=25))
def test_membership_sets_match_every_profile_after_merges_and_erasures(
        redis_stack, book, steps, gaps) -> None:
    r = redis_client(redis_stack)
    r.flushdb()
    events, control = [], []
    ts = T0
    for i, (kind, who, what) in enumerate(steps):
        ts += gaps[i] * HOUR
        if kind == "view":
            user, anon = (who, None) if who.startswith("c") else (None, who)
            events.append(record(i, view(ts, user, anon, category=what)))
        elif kind == "login":
            events.append(record(i, login(ts, who, what)))
        elif kind == "paid":
            events.append(record(i, paid(ts, who, f"o-{i}", what)))
        else:
            control.append((0, len(control), b"", orjson.dumps({"forget": who, "request_id": f"r{i}"})))
    events.append(record(len(steps), view(ts + 40 * DAY, "clock")))   # time passes: tags fade
    settings_ = Settings.load({"recovery_dir": "", "metrics_port": 0, "identity_shards": 2,
                               "customer_shards": 2, "batch_size": 3}, {})
    flow = build_flow(settings_, ListSource(events, 3), RedisStateSink(redis_stack.redis_url, 3600),
                      ListSink(keep=False), lineage="prop", live=False, rules=book,
                      control=ListSource(control, 1) if control else None)
    run_main(flow)

    expected: dict[str, set[str]] = {}
    for key in r.scan_iter("engage:c:*"):
        doc = read_document(r, key)
        if doc["id"].startswith("~"):
            continue
        for m in filter(None, memberships(doc.get("derived", {})).split("\x1f")):
            expected.setdefault(m, set()).add(doc["id"])
    stored = {k.decode()[len("engage:members:{"):-1]: {c.decode() for c in r.smembers(k)}
              for k in r.scan_iter("engage:members:*")}
    assert stored == expected
    index = {k.decode(): set(v.decode().split("\x1f")) for k, v in r.hgetall(MEMBERS_INDEX).items()}
    assert index == {c: {m for m, cs in expected.items() if c in cs}
                     for c in {c for cs in expected.values() for c in cs}}
    for customer in {who for kind, who, _ in steps if kind == "forget"}:
        assert not r.exists(f"engage:c:{{{customer}}}")
        assert all(customer not in cs for cs in stored.values())
