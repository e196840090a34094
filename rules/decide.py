"""Rules applied to a customer: from a trigger to a decision, all in event time.

The customer shard calls a :class:`RuleRunner` when an event is applied,
when one of its event-time timers is due, when a device's history is merged
in, and when the profile reports a change. The runner answers with
:class:`~engage.operators.records.Decision` records and new timers; it does
no I/O. What a decision goes through, in order:

1. **trigger**: an event (with ``where``), the absence of events for a time
   after another (an event-time timer), a date of the profile (a timer), a
   profile change. Every decision is taken when event time (the watermark)
   has passed the minute of its moment, in event-time order per customer:
   by then every event up to that moment has arrived, through whichever
   partition or device, and that is what makes conditions, caps, cooldowns
   and arbitration give the same answers in every run and after every
   restart. The price is latency: an event's decision waits for the allowed
   lateness (``--lateness``) and the rest of its minute;
2. **conditions** (``when``, and a ``where`` that reads the customer), read
   as of the trigger's event time (:class:`~engage.rules.context.Context`);
3. **re-eligibility** (once, every N, cooldown): refused ones are audited
   as ``cooldown``;
4. **A/B and control**: a deterministic bucket per customer and rule;
   control decisions are audited as ``control`` (recorded, never sent);
5. **consent**: the rule's channel, or the preferred consented one; none
   left means ``consent``;
6. **quiet hours** in the customer's time zone: ``drop`` (audited as
   ``quiet_hours``) or ``defer`` to when the window opens, where the
   decision is checked again (cancel events, cancel condition, consent);
7. **arbitration**: decisions for the same customer at the same moment
   compete; the highest priority goes on, the others wait once (at most
   ``max_wait``) or are dropped, per policy;
8. the **contact ledger** (caps, conflict groups) decides last, after this
   module, because it needs every action already sent (see the flow).

Every decision carries a deterministic ``action_id`` (rule version, customer,
trigger), so a replay decides the same ids and the ledger recognises them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import orjson

from engage.events import Event
from engage.monitoring import metrics
from engage.operators.records import Decision
from engage.rules.context import Context
from engage.rules.expr import Condition, EvalError
from engage.rules.model import (AbsenceTrigger, EventTrigger, Rule, RuleSet, ScheduleTrigger,
                                TransitionTrigger)
from engage.rules.policy import calendar_bounds, choose_channel, quiet_until, zone
from engage.state.contact import CapCheck, LedgerRequest
from engage.state.customer import CustomerState, StateConfig

DAY_MS = 86_400_000
#: At most this many recent events of a watched type are remembered per customer.
MAX_MARKS = 64
#: Timer kinds in the shard's heap: absence, schedule, deferred decision.
ABSENCE, SCHEDULE, DEFERRED, EVENT = "a", "s", "d", "e"

#: Events that can set the dates schedules are relative to.
SCHEDULE_SOURCES = frozenset({"register", "profile_update"})

Timer = tuple[int, str, str, str]
"""``(due, customer, kind, reference)`` as kept in the shard's event-time heap."""

Now = Callable[[], float]
#: An empty SHA-256 to copy for each id.
_SHA256 = hashlib.sha256()


def action_id(rule_id: str, version: str, customer: str, anchor: str) -> str:
    """Deterministic id: the same trigger, replayed, gives the same id.

    >>> action_id("r", "v1", "c-1", "e-9") == action_id("r", "v1", "c-1", "e-9")
    True
    """
    digest = _SHA256.copy()   # a copy: cheaper than a new hash object (OpenSSL's set-up)
    digest.update(f"{rule_id}\x1f{version}\x1f{customer}\x1f{anchor}".encode())
    return "a-" + digest.hexdigest()[:24]


def _iso_datetime(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


#: Below this (year 2223), ``ms / 1000`` as a float is within half a
#: microsecond of the exact time, so the datetime path shows exactly the
#: milliseconds given, as integer arithmetic does.
_ISO_FAST_BELOW = 8_000_000_000_000
#: ``YYYY-MM-DDT`` of recent days: every change and action of a day shares it.
_iso_days: dict[int, str] = {}
#: Zero-padded numbers, looked up rather than formatted.
_TWO = [f"{i:02d}" for i in range(100)]
_THREE = [f"{i:03d}" for i in range(1000)]


def iso(ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC string.

    >>> iso(1_700_000_000_123)
    '2023-11-14T22:13:20.123Z'

    Every profile change and action carries one: the time of day comes from
    integer arithmetic and the date part is kept per day, which gives the
    datetime formatting's very string (tests/unit/test_decide_iso.py) at a
    fifth of its cost.
    """
    if ms.__class__ is not int or not 0 <= ms < _ISO_FAST_BELOW:
        return _iso_datetime(ms)
    day = ms // DAY_MS
    date = _iso_days.get(day)
    if date is None:
        if len(_iso_days) >= 4096:
            _iso_days.clear()
        date = _iso_days[day] = _iso_datetime(day * DAY_MS)[:11]
    rest = ms - day * DAY_MS
    s = rest // 1000
    return f"{date}{_TWO[s // 3600]}:{_TWO[s // 60 % 60]}:{_TWO[s % 60]}.{_THREE[rest % 1000]}Z"


# ---------------------------------------------------------------- marks
def mark(state: CustomerState, e: Event, horizon_ms: int) -> None:
    """Remember that ``e`` happened (for absence triggers and cancel checks).

    Kept per type as sorted ``[ts, event_id]`` pairs within ``horizon_ms`` of
    the customer's latest event, at most :data:`MAX_MARKS`; the time of the
    newest mark ever dropped for room is kept too, so a question about a
    range it covers is answered "maybe", never a wrong "no".
    """
    entry = state.marks.get(e.type)
    if entry is None:
        entry = state.marks[e.type] = [0, []]
    pairs: list[Any] = entry[1]
    item = [e.ts, e.event_id]
    if item in pairs:
        return
    pairs.append(item)
    pairs.sort()
    floor = state.max_ts - horizon_ms
    while pairs and pairs[0][0] < floor:
        pairs.pop(0)
    while len(pairs) > MAX_MARKS:
        dropped = pairs.pop(0)
        entry[0] = max(entry[0], dropped[0])


def happened_between(state: CustomerState, types: tuple[str, ...], after: tuple[int, str],
                     until: int) -> bool:
    """Whether an event of ``types`` came after ``after`` (ts, id) and at or before ``until``."""
    for etype in types:
        entry = state.marks.get(etype)
        if entry is None:
            continue
        if entry[0] > after[0]:
            return True   # marks dropped for room may have been in the range
        for ts, event_id in entry[1]:
            if ts > until:
                break
            if (ts, event_id) > after:
                return True
    return False


# ---------------------------------------------------------------- the runner
@dataclass
class Pending:
    """A decision waiting for quiet hours to end or for another try after arbitration."""

    rule_id: str
    customer: str
    action_id: str
    trigger_ts: int
    trigger_ids: list[str]
    anchor: str
    reason: str          # quiet_hours or arbitration
    deadline: int        # for arbitration: when the wait is over
    event: list[Any] | None = None
    lost_to: str = ""    # for arbitration: the rule that won


class RuleRunner:
    """Applies one :class:`RuleSet` to customers; pure logic, event time only."""

    def __init__(self, rules: RuleSet, cfg: StateConfig, live: bool = True,
                 now: Now = time.time) -> None:
        self.rules = rules
        self.cfg = cfg
        self.live = live
        self.now = now
        active = [r for r in rules.rules if r.enabled]
        self.on_type: dict[str, list[Rule]] = {}
        self.absence_after: dict[str, list[Rule]] = {}
        self.schedules = [r for r in active if isinstance(r.trigger, ScheduleTrigger)]
        self.transitions = [r for r in active if isinstance(r.trigger, TransitionTrigger)]
        watched: set[str] = set()
        longest = 0
        for r in active:
            t = r.trigger
            if isinstance(t, EventTrigger):
                for etype in t.types:
                    self.on_type.setdefault(etype, []).append(r)
            elif isinstance(t, AbsenceTrigger):
                for etype in t.after:
                    self.absence_after.setdefault(etype, []).append(r)
                watched.update(t.after + t.missing)
                longest = max(longest, t.within_ms)
            watched.update(r.cancel_on)
        self.watched = frozenset(watched)
        #: Event types the runner needs to see at all; the shard skips the
        #: call for the others (most clicks), which keeps rules cheap.
        self.relevant = frozenset(watched | set(self.on_type) | set(self.absence_after)
                                  | (SCHEDULE_SOURCES if self.schedules else set()))
        policy = rules.policy
        #: How far back marks must reach: the longest absence, plus the
        #: longest a decision may wait (quiet hours, arbitration) before a
        #: cancel check looks back to its trigger.
        self.mark_horizon_ms = longest + max(DAY_MS, policy.max_wait_ms) + DAY_MS
        self.by_id = {r.id: r for r in active}
        #: Event rules whose ``where`` reads the event alone: checked on
        #: arrival, so most events arm no timer at all.
        self.where_on_event = frozenset(
            r.id for r in active if isinstance(r.trigger, EventTrigger) and r.trigger.where
            is not None and all(n.startswith("event.") for n in r.trigger.where.names()))
        self.pending: dict[str, Pending] = {}

    # ------------------------------------------------------------------ triggers
    def on_event(self, state: CustomerState, e: Event, timers: list[Timer],
                 out: list[Decision]) -> None:
        """A (non-late) event was applied to ``state``: mark it, arm timers, fire event rules."""
        if e.late:
            return
        if e.type in self.watched:
            mark(state, e, self.mark_horizon_ms)
        customer = state.key
        for rule in self.absence_after.get(e.type, ()):
            t = rule.trigger
            assert isinstance(t, AbsenceTrigger)
            if t.where is not None and not self._holds(rule, t.where, Context(
                    state, self.cfg, e.ts, event=e)):
                continue
            ref = orjson.dumps([rule.id, e.ts, e.event_id, e.type, e.channel, e.props]).decode()
            timers.append((e.ts + t.within_ms, customer, ABSENCE, ref))
        for rule in self.on_type.get(e.type, ()):
            t = rule.trigger
            assert isinstance(t, EventTrigger)
            if rule.id in self.where_on_event and t.where is not None and not self._holds(
                    rule, t.where, Context(state, self.cfg, e.ts, event=e)):
                continue
            # Everything else waits until event time has passed the event (a
            # timer due at once): by then every event up to it has arrived,
            # whichever partition or device it came through, so conditions
            # read the same customer, and decisions meet the caps, cooldowns
            # and arbitration in event-time order, in every run.
            ref = orjson.dumps([rule.id, e.event_id, e.type, e.ts, e.channel, e.props]).decode()
            timers.append((e.ts, customer, EVENT, ref))
        if self.schedules and e.type in SCHEDULE_SOURCES and "birthday" in state.profile:
            # Armed when the date is given or changed, and again when one fires.
            self._arm_schedules(state, e.ts, timers)

    def on_merge(self, state: CustomerState, device: CustomerState, timers: list[Timer]) -> None:
        """A device's history joined ``state``: its pending absences count for the customer.

        Every ``after`` event of the device arms its timer, as it would have
        had it been attributed after the login: which of the two happens
        depends on arrival order, the outcome must not.
        """
        for etype, rules in self.absence_after.items():
            entry = device.marks.get(etype)
            if entry is None:
                continue
            for ts, event_id in entry[1]:
                for rule in rules:
                    t = rule.trigger
                    assert isinstance(t, AbsenceTrigger)
                    ref = orjson.dumps([rule.id, ts, event_id, etype, None, {}]).decode()
                    timers.append((ts + t.within_ms, state.key, ABSENCE, ref))

    def on_change(self, state: CustomerState, change: dict[str, Any], timers: list[Timer],
                  out: list[Decision]) -> None:
        """The profile changed (stage entered, tag added, ...): fire transition rules.

        ``change``: ``kind``, ``name``, ``from``, ``to``, ``ts``.
        """
        self.on_changes(state, [change], timers, out)

    def on_changes(self, state: CustomerState, changes: list[dict[str, Any]],
                   timers: list[Timer], out: list[Decision]) -> None:
        """Changes of one moment (one look at the profile): one arbitration for
        every transition rule they fire, as for rules triggered by one event."""
        if not changes:
            return
        ts = int(changes[0]["ts"])
        moment: list[Decision] = []
        for change in changes:
            for rule in self.transitions:
                t = rule.trigger
                assert isinstance(t, TransitionTrigger)
                if t.kind != change.get("kind") or (t.name is not None
                                                    and t.name != change.get("name")):
                    continue
                ctx = Context(state, self.cfg, ts, change=change)
                anchor = f"{change.get('kind')}:{change.get('name')}@{ts}"
                self._consider(rule, state, ctx, ts, [], anchor, moment, timers)
        self._arbitrate(moment, ts, timers, out)

    def on_timers(self, state: CustomerState, due: int, due_now: list[tuple[str, str]],
                  timers: list[Timer], out: list[Decision]) -> None:
        """Timers of ``state``'s customer due at the same instant: one moment, one arbitration."""
        moment: list[Decision] = []
        for kind, ref in due_now:
            self._timer(state, due, kind, ref, timers, moment)
        self._arbitrate(moment, due, timers, out)

    def on_timer(self, state: CustomerState, due: int, kind: str, ref: str,
                 timers: list[Timer], out: list[Decision]) -> None:
        """An event-time timer of ``state``'s customer is due (the watermark passed it)."""
        self.on_timers(state, due, [(kind, ref)], timers, out)

    def _timer(self, state: CustomerState, due: int, kind: str, ref: str, timers: list[Timer],
               moment: list[Decision]) -> None:
        if kind == EVENT:
            rule_id, e_id, e_type, e_ts, e_channel, e_props = orjson.loads(ref)[:6]
            rule = self.by_id.get(rule_id)
            if rule is None or not isinstance(rule.trigger, EventTrigger):
                return
            event = Event(e_id, e_type, e_ts, state.key, None, e_channel, e_props)
            ctx = Context(state, self.cfg, e_ts, event=event)
            where = rule.trigger.where
            if where is not None and rule.id not in self.where_on_event and not self._holds(
                    rule, where, ctx):
                return
            self._consider(rule, state, ctx, e_ts, [e_id], e_id, moment, timers, event)
        elif kind == ABSENCE:
            rule_id, a_ts, a_id, a_type, a_channel, a_props = orjson.loads(ref)
            rule = self.by_id.get(rule_id)
            if rule is None or not isinstance(rule.trigger, AbsenceTrigger):
                return   # the rule was removed or changed kind since the timer was armed
            t = rule.trigger
            if a_ts + t.within_ms != due:
                return   # armed under an earlier version with another delay
            if happened_between(state, t.after + t.missing, (a_ts, a_id), due):
                return   # a later 'after' event re-armed it, or a 'missing' one came
            event = Event(a_id, a_type, a_ts, state.key, None, a_channel, a_props)
            ctx = Context(state, self.cfg, due, event=event)
            self._consider(rule, state, ctx, due, [a_id], f"{a_id}@{due}", moment, timers, event)
        elif kind == SCHEDULE:
            rule_id, year = ref.split("\x1f")
            rule = self.by_id.get(rule_id)
            if rule is None or not isinstance(rule.trigger, ScheduleTrigger):
                return
            if self._schedule_due(state, rule.trigger, int(year)) != due:
                return   # the date changed since: the new one has its own timer
            ctx = Context(state, self.cfg, due)
            self._consider(rule, state, ctx, due, [], f"{rule.trigger.date_field}@{year}", moment,
                           timers)
            self._arm_schedules(state, due + 1, timers)
        elif kind == DEFERRED:
            pending = self.pending.pop(ref, None)
            if pending is not None:
                self._retry(pending, state, due, moment, timers)

    # ------------------------------------------------------------------ deciding
    def _holds(self, rule: Rule, cond: Condition, ctx: Context) -> bool:
        try:
            return cond.evaluate(ctx.get)
        except (EvalError, ValueError, TypeError, KeyError):
            metrics.RULE_EVAL_ERRORS.labels(rule.id).inc()
            return False

    def _consider(self, rule: Rule, state: CustomerState, ctx: Context, moment_ts: int,
                  trigger_ids: list[str], anchor: str, moment: list[Decision],
                  timers: list[Timer], event: Event | None = None) -> None:
        """Conditions, re-eligibility, bucket, consent and quiet hours for one trigger."""
        for cond in rule.conditions:
            if not self._holds(rule, cond, ctx):
                return
        aid = action_id(rule.id, rule.version, state.key, anchor)
        doc = self._doc(rule, state, ctx, aid, moment_ts, trigger_ids)
        if not self._eligible(rule, state, moment_ts):
            moment.append(self._refused(doc, "cooldown"))
            return
        self._record(rule, state, moment_ts)
        arm = rule.action.bucket(rule.id, state.key)
        if arm == "control":
            doc["variant"] = "control"
            # Held out, yet a touch: its customer's orders measure the control group.
            moment.append(self._refused(doc, "control")._replace(
                moment_ts=moment_ts, window_ms=self._window(rule)))
            return
        if arm is not None:
            doc["variant"] = arm
        self._finish(rule, state, ctx, doc, moment_ts, moment_ts, anchor, trigger_ids, moment,
                     timers, event)

    def _finish(self, rule: Rule, state: CustomerState, ctx: Context, doc: dict[str, Any],
                moment_ts: int, trigger_ts: int, anchor: str, trigger_ids: list[str],
                moment: list[Decision], timers: list[Timer], event: Event | None,
                retried: bool = False) -> None:
        """Consent, payload and quiet hours: the steps checked again after a deferral."""
        variant = next((v for v in rule.action.variants if v.name == doc.get("variant")), None)
        wanted = (variant.channel if variant is not None and variant.channel else None) \
            or rule.action.channel
        preferred = ctx.get("preferred_channel")
        channel = choose_channel(wanted, state.consent, preferred if isinstance(preferred, str)
                                 else None)
        doc["channel"] = channel
        template = variant.payload if variant is not None else rule.action.payload
        doc["payload"] = template.render(ctx.get)
        doc["explain"]["values"] = dict(ctx.seen)
        if channel is None:
            moment.append(self._refused(doc, "consent"))
            return
        policy = self.rules.policy
        tz = zone(ctx.get("timezone") if isinstance(ctx.get("timezone"), str) else None,
                  policy.quiet_hours.default_timezone)
        opens = quiet_until(moment_ts, policy.quiet_hours, tz)
        if opens is not None and not rule.transactional:
            if rule.on_quiet == "drop":
                moment.append(self._refused(doc, "quiet_hours"))
                return
            self._defer(Pending(rule.id, state.key, doc["action_id"], trigger_ts, trigger_ids,
                                anchor, "quiet_hours", opens, _event_ref(event)), opens, timers)
            return
        request = None if rule.transactional else self._request(rule, state, doc, channel,
                                                               moment_ts, tz)
        moment.append(Decision(doc, request, rule.action.priority, rule.transactional, retried,
                               trigger_ts, anchor, moment_ts, self._window(rule)))

    def _retry(self, pending: Pending, state: CustomerState, now_ts: int, moment: list[Decision],
               timers: list[Timer]) -> None:
        """A deferred decision's time has come: cancelled meanwhile? still consented?"""
        rule = self.by_id.get(pending.rule_id)
        if rule is None:
            return
        event = None
        if pending.event is not None:
            a_id, a_type, a_ts, a_channel, a_props = pending.event
            event = Event(a_id, a_type, a_ts, state.key, None, a_channel, a_props)
        ctx = Context(state, self.cfg, now_ts, event=event)
        doc = self._doc(rule, state, ctx, pending.action_id, pending.trigger_ts,
                        pending.trigger_ids)
        arm = rule.action.bucket(rule.id, state.key)
        if arm is not None and arm != "control":
            doc["variant"] = arm
        doc["explain"]["deferred"] = {"reason": pending.reason, "until": iso(now_ts)}
        if pending.lost_to:
            doc["explain"]["arbitration"] = {"lost_to": pending.lost_to}
        last = pending.trigger_ids[-1] if pending.trigger_ids else ""
        if rule.cancel_on and happened_between(state, rule.cancel_on, (pending.trigger_ts, last),
                                               now_ts):
            moment.append(self._refused(doc, "cancelled"))
            return
        if rule.cancel_when is not None and self._holds(rule, rule.cancel_when, ctx):
            moment.append(self._refused(doc, "cancelled"))
            return
        if pending.reason == "arbitration" and now_ts > pending.deadline:
            moment.append(self._refused(doc, "expired"))
            return
        self._finish(rule, state, ctx, doc, now_ts, pending.trigger_ts, pending.anchor,
                     pending.trigger_ids, moment, timers, event,
                     retried=pending.reason == "arbitration")

    def _arbitrate(self, moment: list[Decision], moment_ts: int, timers: list[Timer],
                   out: list[Decision]) -> None:
        """Decisions for the same customer at the same moment: the highest priority goes on."""
        contenders = [d for d in moment if d.request is not None and "reason" not in d.doc]
        if len(contenders) <= 1:
            out.extend(moment)
            return
        contenders.sort(key=lambda d: (-d.priority, d.doc["rule_id"]))
        winner = contenders[0]
        losers = {id(d) for d in contenders[1:]}
        policy = self.rules.policy
        for d in moment:
            if id(d) not in losers:
                out.append(d)
                continue
            d.doc["explain"]["arbitration"] = {"lost_to": winner.doc["rule_id"]}
            if policy.arbitration == "drop" or d.retried:
                out.append(self._refused(d.doc, "conflict" if not d.retried else "expired"))
                continue
            rule = self.by_id[d.doc["rule_id"]]
            retry = moment_ts + policy.max_wait_ms
            self._defer(Pending(rule.id, d.doc["user_id"], d.doc["action_id"], d.trigger_ts,
                                list(d.doc["trigger_event_ids"]), d.anchor, "arbitration", retry,
                                lost_to=winner.doc["rule_id"]), retry, timers)

    def _defer(self, pending: Pending, until: int, timers: list[Timer]) -> None:
        metrics.ACTIONS_DEFERRED.labels(pending.rule_id, pending.reason).inc()
        self.pending[pending.action_id] = pending
        timers.append((until, pending.customer, DEFERRED, pending.action_id))

    # ------------------------------------------------------------------ pieces
    def _doc(self, rule: Rule, state: CustomerState, ctx: Context, aid: str, trigger_ts: int,
             trigger_ids: list[str]) -> dict[str, Any]:
        decided = int(self.now() * 1000) if self.live else ctx.as_of
        doc: dict[str, Any] = {
            "action_id": aid,
            "rule_id": rule.id,
            "rule_version": rule.version,
            "user_id": state.key,
            "channel": None,
            "payload": {},
            "decided_at": iso(decided),
            "trigger_ts": iso(trigger_ts),
            "trigger_event_ids": list(trigger_ids),
            "explain": {"rule": rule.description or rule.id, "source": rule.source,
                        "trigger": _describe(rule),
                        "conditions": [c.text for c in rule.conditions]},
        }
        if rule.transactional:
            # Senders may route service messages differently; attribution and
            # the report leave them out (they serve an order, not cause one).
            doc["transactional"] = True
        return doc

    @staticmethod
    def _window(rule: Rule) -> int:
        """The attribution window of the rule's touches; 0 for a transactional rule,
        whose messages (receipts, shipping notes) serve an order, not cause one."""
        return 0 if rule.transactional else rule.attribution_window_ms

    def _refused(self, doc: dict[str, Any], reason: str) -> Decision:
        doc["reason"] = reason
        return Decision(doc, None, 0, False)

    def _eligible(self, rule: Rule, state: CustomerState, ts: int) -> bool:
        last = state.fired.get(rule.id)
        if last is None:
            return True
        el = rule.eligibility
        if el.mode == "once":
            return False
        if el.mode == "every":
            return ts // el.period_ms != last[1]
        if el.mode == "cooldown":
            return abs(ts - last[0]) >= el.period_ms
        return True

    def _record(self, rule: Rule, state: CustomerState, ts: int) -> None:
        el = rule.eligibility
        slot = ts // el.period_ms if el.mode == "every" and el.period_ms else 0
        last = state.fired.get(rule.id)
        state.fired[rule.id] = [ts if last is None else max(last[0], ts), slot]

    def _request(self, rule: Rule, state: CustomerState, doc: dict[str, Any], channel: str,
                 ts: int, tz: Any) -> LedgerRequest:
        policy = self.rules.policy
        caps: list[CapCheck] = []
        scoped = [("all", "", policy.global_cap), ("rule", rule.id, rule.cap)]
        scoped += [("channel", channel, cap) for name, cap in policy.channel_caps if name == channel]
        longest = policy.conflict_window_ms
        for scope, value, cap in scoped:
            if cap is None:
                continue
            if cap.calendar:
                lo, hi = calendar_bounds(ts, cap, tz)
                caps.append(CapCheck(scope, value, cap.max, lo, hi, 0))
            else:
                caps.append(CapCheck(scope, value, cap.max, ts - cap.per_ms, ts + cap.per_ms,
                                     cap.per_ms))
            longest = max(longest, cap.per_ms)
        group = rule.conflict_group or ""
        return LedgerRequest(state.key, doc["action_id"], ts, rule.id, channel, group,
                             policy.conflict_window_ms if group else 0, tuple(caps),
                             2 * longest + 31 * DAY_MS)

    # ------------------------------------------------------------------ schedules
    def _schedule_due(self, state: CustomerState, t: ScheduleTrigger, year: int) -> int | None:
        """When a schedule fires in ``year`` of the date (local time), or None."""
        entry = state.profile.get(t.date_field)
        raw = entry[0] if entry else None
        if not isinstance(raw, str):
            return None
        parts = raw.split("-")
        try:
            month, day = int(parts[-2]), int(parts[-1])
            tzname = state.profile.get("timezone", [None])[0]
            tz = zone(tzname if isinstance(tzname, str) else None,
                      self.rules.policy.quiet_hours.default_timezone)
            try:
                date = datetime(year, month, day, t.at_minute // 60, t.at_minute % 60, tzinfo=tz)
            except ValueError:
                date = datetime(year, month, 28, t.at_minute // 60, t.at_minute % 60, tzinfo=tz)
        except (ValueError, IndexError):
            return None
        return int(date.timestamp() * 1000) + t.offset_ms

    def _arm_schedules(self, state: CustomerState, after: int, timers: list[Timer]) -> None:
        """Arm each schedule rule's next firing after ``after`` (once per customer and year)."""
        year = datetime.fromtimestamp(after / 1000, tz=timezone.utc).year
        for rule in self.schedules:
            t = rule.trigger
            assert isinstance(t, ScheduleTrigger)
            for y in (year - 1, year, year + 1):
                due = self._schedule_due(state, t, y)
                if due is None or due < after:
                    continue
                key = f"{rule.id}\x1f{y}"
                if state.armed.get(rule.id) != due:
                    state.armed[rule.id] = due
                    timers.append((due, state.key, SCHEDULE, key))
                break


def _event_ref(event: Event | None) -> list[Any] | None:
    if event is None:
        return None
    return [event.event_id, event.type, event.ts, event.channel, event.props]


def _describe(rule: Rule) -> str:
    t = rule.trigger
    if isinstance(t, EventTrigger):
        where = f" where {t.where.text}" if t.where is not None else ""
        return f"on {'/'.join(t.types)}{where}"
    if isinstance(t, AbsenceTrigger):
        hours = t.within_ms / 3_600_000
        return (f"{'/'.join(t.after)}, then no {'/'.join(t.missing)} within "
                f"{hours:g} h")
    if isinstance(t, ScheduleTrigger):
        return f"{t.date_field} {t.offset_ms / DAY_MS:+g} d at {t.at_minute // 60:02d}:{t.at_minute % 60:02d}"
    return f"{t.kind} {t.name or '(any)'}"
