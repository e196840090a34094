"""The contact ledger: what each customer was sent, and the caps and conflict groups it enforces.

Caps count *distinct action ids*: an action decided again after a crash (same
id) finds itself in the ledger and is sent again without counting twice,
so replays never double-count a cap and never mint a new id.

A rolling cap ``max`` per ``per`` holds in *every* window of that length:
an action is refused if adding it would put more than ``max`` entries of its
scope into any window that contains it. Checking only the window ending at
the action would let an action stamped earlier than ones already sent slip
through (decisions are not made in event-time order); checking every window
that contains it keeps "no customer ever gets more than the cap" true
whatever the order. Calendar caps count the customer's local day, week or
month that holds the action.

This module is the reference implementation, in memory (replays, tests).
Production runs the same algorithm as one Lua script per batch in Redis
(:mod:`engage.connectors.redis_ledger`); a test holds the two to the same
answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

SEND = "send"
CAP = "cap"
CONFLICT = "conflict"


class CapCheck(NamedTuple):
    """One cap to check: entries of ``scope`` (``all``, ``channel``, ``rule``) equal to ``value``."""

    scope: str
    value: str
    max: int
    lo: int       # calendar: period start; rolling: ts - per
    hi: int       # calendar: period end (exclusive); rolling: ts + per
    per: int      # rolling window length; 0 for a calendar period


class LedgerRequest(NamedTuple):
    """One candidate action for the ledger to admit or refuse."""

    customer: str
    action_id: str
    ts: int
    rule: str
    channel: str
    group: str            # conflict group, "" for none
    group_window: int     # ms either side of ``ts`` in which the group allows no other
    caps: tuple[CapCheck, ...]
    keep_ms: int          # entries older than ts - keep_ms may be forgotten

    def span(self) -> tuple[int, int]:
        """The event-time range of entries this request needs to see."""
        lo = min([c.lo for c in self.caps] + [self.ts - self.group_window])
        hi = max([c.hi for c in self.caps] + [self.ts + self.group_window])
        return lo, hi

    def to_wire(self) -> list[Any]:
        """Compact JSON form for the Lua script."""
        return [self.action_id, self.ts, self.rule, self.channel, self.group,
                self.group_window, [list(c) for c in self.caps], self.keep_ms]


class Entry(NamedTuple):
    """A sent action as the ledger remembers it."""

    ts: int
    rule: str
    channel: str
    group: str


def _matches(entry: Entry, cap: CapCheck) -> bool:
    if cap.scope == "channel":
        return entry.channel == cap.value
    if cap.scope == "rule":
        return entry.rule == cap.value
    return True


def cap_allows(times: list[int], ts: int, cap: CapCheck) -> bool:
    """Whether one more entry at ``ts`` keeps every window of ``cap`` within its maximum.

    ``times`` are the event times of the scope's entries already admitted.

    >>> day = 86_400_000
    >>> rolling = CapCheck("all", "", 2, 10 * day - 7 * day, 10 * day + 7 * day, 7 * day)
    >>> cap_allows([5 * day, 6 * day], 10 * day, rolling)      # 3 within days 5..11
    False
    >>> cap_allows([1 * day, 16 * day], 10 * day, rolling)     # no week holds three
    True
    """
    if cap.per <= 0:
        return sum(1 for t in times if cap.lo <= t < cap.hi) + 1 <= cap.max
    near = sorted([t for t in times if ts - cap.per < t < ts + cap.per] + [ts])
    for start in near:
        if start > ts:
            break
        if start <= ts - cap.per:
            continue
        if sum(1 for t in near if start <= t < start + cap.per) > cap.max:
            return False
    return True


def judge(entries: dict[str, Entry], req: LedgerRequest) -> str:
    """The verdict for ``req`` given the customer's ``entries`` (not modified)."""
    if req.action_id in entries:
        return SEND   # decided and admitted before: the same action again
    for cap in req.caps:
        times = [e.ts for e in entries.values() if _matches(e, cap)]
        if not cap_allows(times, req.ts, cap):
            return CAP
    if req.group:
        for e in entries.values():
            if e.group == req.group and abs(e.ts - req.ts) < req.group_window:
                return CONFLICT
    return SEND


@dataclass
class MemoryLedger:
    """The ledger in memory: same verdicts as the Redis one, for replays and tests."""

    entries: dict[str, dict[str, Entry]]

    @staticmethod
    def empty() -> "MemoryLedger":
        """A ledger that has seen nothing."""
        return MemoryLedger({})

    def decide(self, requests: list[LedgerRequest]) -> list[str]:
        """Admit or refuse each request in order; admitted ones are recorded."""
        verdicts = []
        for req in requests:
            mine = self.entries.setdefault(req.customer, {})
            verdict = judge(mine, req)
            if verdict == SEND and req.action_id not in mine:
                mine[req.action_id] = Entry(req.ts, req.rule, req.channel, req.group)
                floor = req.ts - req.keep_ms
                for old in [k for k, e in mine.items() if e.ts < floor]:
                    del mine[old]
            verdicts.append(verdict)
        return verdicts

    def sent(self, customer: str) -> dict[str, Entry]:
        """The entries of one customer (action id -> entry)."""
        return dict(self.entries.get(customer, {}))
