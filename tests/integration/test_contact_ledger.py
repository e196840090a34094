"""The contact ledger in Redis gives exactly the reference algorithm's verdicts, and never exceeds a cap."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage.connectors.devstack import DevStack
from engage.connectors.redis_ledger import RedisLedger
from engage.state.contact import CapCheck, LedgerRequest, MemoryLedger

pytestmark = pytest.mark.integration
DAY = 86_400_000
WEEK = 7 * DAY


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with DevStack(with_kafka=False) as s:
        assert s.redis_url
        yield s.redis_url


def request(customer: str, n: int, ts: int, rule: str, channel: str, group: str,
            calendar: bool) -> LedgerRequest:
    caps = [CapCheck("all", "", 2, ts - WEEK, ts + WEEK, WEEK),
            CapCheck("channel", "sms", 1, ts - WEEK, ts + WEEK, WEEK) if channel == "sms"
            else CapCheck("rule", rule, 1, ts - 3 * DAY, ts + 3 * DAY, 3 * DAY)]
    if calendar:   # once per calendar week alone, so no rolling cap masks its edges
        lo = ts // WEEK * WEEK
        caps = [CapCheck("rule", rule, 1, lo, lo + WEEK, 0)]
    return LedgerRequest(customer, f"a-{n}", ts, rule, channel, group, DAY if group else 0,
                         tuple(caps), 400 * DAY)


REQUESTS = st.lists(st.tuples(st.sampled_from(["c1", "c2"]),
                              # whole days or hours: window edges are hit exactly, often
                              st.integers(0, 30).map(lambda d: d * DAY)
                              | st.integers(0, 30 * 24).map(lambda h: h * 3_600_000),
                              st.sampled_from(["cart", "birthday", "nudge"]),
                              st.sampled_from(["push", "sms", "email"]),
                              st.sampled_from(["", "", "discount"]), st.booleans(),
                              st.integers(0, 5)),
                    min_size=1, max_size=40)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=REQUESTS, batch=st.integers(1, 7))
def test_redis_and_reference_ledgers_agree_and_no_window_ever_exceeds_its_cap(
        redis_url: str, raw: list, batch: int) -> None:
    redis.Redis.from_url(redis_url).flushdb()   # every example starts from an empty ledger
    # Repeats of an earlier id (a replay after a crash) are part of the input.
    reqs = []
    for i, (cust, ts, rule, channel, group, calendar, repeat) in enumerate(raw):
        n = i - repeat if repeat and i >= repeat else i
        reqs.append(request(cust, n, ts, rule, channel, group, calendar)
                    if not (repeat and i >= repeat) else reqs[n])
    calendar_only = {r.action_id: r.caps[0].per == 0 for r in reqs}
    memory = MemoryLedger.empty()
    redis_ledger = RedisLedger(redis_url, 400 * DAY)
    try:
        got_memory, got_redis = [], []
        for start in range(0, len(reqs), batch):
            chunk = reqs[start:start + batch]
            got_memory += memory.decide(chunk)
            got_redis += redis_ledger.decide(chunk)
    finally:
        redis_ledger.close()
    assert got_redis == got_memory
    for customer, entries in memory.entries.items():
        # (Requests under the calendar cap alone do not check the weekly one.)
        times = sorted(e.ts for a, e in entries.items() if not calendar_only[a])
        # Every 7-day window holds at most 2 actions, whatever order they were decided in.
        assert all(sum(1 for t in times if s <= t < s + WEEK) <= 2 for s in times), customer
        assert len({e for e in entries}) == len(entries)


def test_a_replayed_action_is_sent_again_without_counting_twice(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, 400 * DAY)
    first = request("replayed", 1, 10 * DAY, "cart", "push", "", False)
    second = request("replayed", 2, 11 * DAY, "nudge", "push", "", False)
    third = request("replayed", 3, 12 * DAY, "birthday", "push", "", False)
    assert ledger.decide([first, second]) == ["send", "send"]
    # After a crash the same decisions come again, then a new one: the cap of 2
    # per week still counts two actions, not four.
    assert ledger.decide([first, second, third]) == ["send", "send", "cap"]
    ledger.close()
