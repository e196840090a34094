"""The reference contact ledger: caps hold in every window, calendar periods end where they say."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engage.state.contact import CAP, CONFLICT, SEND, CapCheck, LedgerRequest, MemoryLedger

DAY = 86_400_000
WEEK = 7 * DAY


def req(n: int, ts: int, caps: tuple[CapCheck, ...], rule: str = "r", group: str = "",
        customer: str = "c") -> LedgerRequest:
    return LedgerRequest(customer, f"a-{n}", ts, rule, "push", group, DAY if group else 0, caps,
                         400 * DAY)


def weekly(ts: int, most: int = 2) -> tuple[CapCheck, ...]:
    return (CapCheck("all", "", most, ts - WEEK, ts + WEEK, WEEK),)


def test_a_calendar_period_ends_before_its_end_instant() -> None:
    ledger = MemoryLedger.empty()
    week2 = (CapCheck("rule", "r", 1, WEEK, 2 * WEEK, 0),)
    week1 = (CapCheck("rule", "r", 1, 0, WEEK, 0),)
    assert ledger.decide([req(1, WEEK, week2), req(2, WEEK - 1, week1), req(3, 0, week1)]) == \
        [SEND, SEND, CAP]


def test_an_earlier_action_decided_later_cannot_overfill_a_window() -> None:
    # Sent on days 5 and 6; a decision stamped day 1 comes later: the week
    # from day 0 would be fine, the week from day 1 would hold three.
    ledger = MemoryLedger.empty()
    assert ledger.decide([req(1, 5 * DAY, weekly(5 * DAY)), req(2, 6 * DAY, weekly(6 * DAY)),
                          req(3, 1 * DAY, weekly(1 * DAY))]) == [SEND, SEND, CAP]
    # The week [day 5, day 12) is full; from day 12 on, day 5 has slid out.
    assert ledger.decide([req(4, 12 * DAY - 1, weekly(12 * DAY - 1))]) == [CAP]
    assert ledger.decide([req(5, 12 * DAY, weekly(12 * DAY))]) == [SEND]


def test_a_conflict_group_keeps_one_offer_per_window_and_other_groups_pass() -> None:
    ledger = MemoryLedger.empty()
    assert ledger.decide([req(1, 0, (), group="discount"), req(2, DAY - 1, (), group="discount"),
                          req(3, DAY - 1, (), group="content"), req(4, DAY, (), group="discount")]) \
        == [SEND, CONFLICT, SEND, SEND]


@settings(max_examples=200, deadline=None)
@given(stamps=st.lists(st.integers(0, 60).map(lambda h: h * 6 * 3_600_000), min_size=1,
                       max_size=40),
       most=st.integers(1, 3), repeats=st.lists(st.integers(0, 39), max_size=10))
def test_no_customer_ever_gets_more_than_the_cap_whatever_the_order_and_replays(
        stamps: list[int], most: int, repeats: list[int]) -> None:
    reqs = [req(i, ts, weekly(ts, most)) for i, ts in enumerate(stamps)]
    reqs += [reqs[i] for i in repeats if i < len(reqs)]   # the same decisions again, after a crash
    ledger = MemoryLedger.empty()
    verdicts = ledger.decide(reqs)
    times = sorted(e.ts for e in ledger.sent("c").values())
    assert all(sum(1 for t in times if s <= t < s + WEEK) <= most for s in times)
    # A replayed decision gets the verdict it got the first time.
    for r, v in zip(reqs[len(stamps):], verdicts[len(stamps):]):
        assert v == verdicts[int(r.action_id[2:])]
