"""One customer's attribution ledger: touches, and the orders credited to them.

The ledger is plain data (a dict of lists and dicts of str and int) so it can
live inside a customer's state, be frozen with orjson and snapshotted, expired
and erased with the customer. The functions here change it in place and return
the *conversion records* to publish; they read no clock: every time is the
event time the caller passes, so a replay of the same events gives the same
records.

**Touches.** A touch is an action sent, or a control-group decision recorded
(held out, never sent: ``variant == "control"``). Each keeps its rule, rule
version, variant, channel, event time, attribution window (the rule's
``attribution_window``, 7 days by default) and the coupon its payload carried.

**Which touch an order is credited to (last touch).** An ``order_paid`` at
time T can be caused by a touch at time t when ``t < T <= t + window``: the
touch came strictly before the order (a post-purchase message fired *by* this
order, at the same millisecond, must not be credited with it) and the order
falls inside that touch's own window (inclusive). Among those eligible:

1. **coupon first**: when the order's ``coupon`` matches a touch's coupon
   (case-insensitively, surrounding blanks ignored), the most recent matching
   touch is credited and the order counts as a *redemption* of it, even if a
   later touch without that coupon exists: a code is hard evidence of which
   message the customer acted on, recency is only a guess;
2. otherwise **the most recent touch** is credited (last touch).

Ties in time are broken deterministically, never by arrival order: a sent
action beats a control decision at the same millisecond (the customer did
receive the message), then the greater ``action_id`` wins.

Besides the credited record, the order gives one uncredited record
(``credited: false``) for the latest eligible touch of every *other* rule
(its window held the order too). Revenue counts only on credited records;
the uncredited ones let a report measure "ordered within the window" per
rule without other rules' later messages stealing its conversions, which
matters for uplift against a control group (see :mod:`engage.report`).

**Refunds.** An ``order_refunded`` for a credited order reverses it, in part
or in full by amount, when it comes no later than the credited touch's
window *after the order was paid* (every credited order gets the same return
period, whether it came on day 1 or day 7 of the window). Refunded cents are
capped at the order's amount, so net revenue never goes negative; the
conversion counts as reversed once its net revenue is zero. A refund after
that period leaves the conversion standing.

**Idempotent and bounded.** An order id already seen is ignored (a re-sent
``order_paid`` counts once), as is a refund event id already applied and a
touch whose action id is already held. :func:`prune` drops touches whose
window has closed and orders whose refund period has, and caps both lists
(:data:`MAX_TOUCHES`, :data:`MAX_ORDERS`), dropping the oldest.

Conversion records carry a deterministic ``conversion_id`` (order id and
action id): a reader that keeps, per ``conversion_id``, the record with the
largest ``refunded_cents`` has the current state of every conversion whatever
order and however many times records arrived.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

DAY_MS = 86_400_000
#: The attribution window of a rule that does not name one.
DEFAULT_WINDOW_MS = 7 * DAY_MS
#: Touches kept per customer at most (the oldest go first).
MAX_TOUCHES = 32
#: Credited orders kept per customer for refunds and duplicate detection at most.
MAX_ORDERS = 32
#: Refund event ids remembered per order (a re-sent refund is recognised by its id).
MAX_REFUNDS_PER_ORDER = 16
#: The variant of a control-group touch.
CONTROL = "control"

# A touch in the ledger's "t" list: [ts, action_id, rule_id, rule_version,
# variant, channel, window_ms, coupon, sent]; lists, not dicts, because every
# customer carries them and they are frozen with the state at every snapshot.
_TS, _AID, _RULE, _VER, _VAR, _CHAN, _WIN, _COUPON, _SENT = range(9)
# An order in the ledger's "o" dict, by order id: [paid_ts, paid_cents,
# refunded_cents, refund_until, keep_until, conversions, refund_ids, coupon],
# where each conversion is [conversion_id, touch, matched_by, redeemed (0/1)]:
# what a refund's records repeat, so that the newest record is whole.
_PAID_TS, _PAID, _REFUNDED, _UNTIL, _KEEP, _CONVS, _REFUND_IDS, _ORDER_COUPON = range(8)


@dataclass(frozen=True)
class Touch:
    """An action sent, or a control-group decision, as the ledger remembers it.

    ``ts`` is the event time of the decision (epoch ms), ``window_ms`` the
    rule's attribution window, ``coupon`` the code its payload carried ("" if
    none); ``variant`` is ``"control"`` for a held-out decision, "" for a rule
    without variants.
    """

    ts: int
    action_id: str
    rule_id: str
    rule_version: str = ""
    variant: str = ""
    channel: str = ""
    window_ms: int = DEFAULT_WINDOW_MS
    coupon: str = ""

    @property
    def sent(self) -> bool:
        """False for a control-group decision (recorded, never sent)."""
        return self.variant != CONTROL

    def check(self) -> None:
        """Raise ValueError, naming the action and the field, when the touch is malformed."""
        where = f"touch {self.action_id!r}"
        if not isinstance(self.action_id, str) or not self.action_id:
            raise ValueError(f"{where}: action_id must be a non-empty string")
        if not isinstance(self.rule_id, str) or not self.rule_id:
            raise ValueError(f"{where}: rule_id must be a non-empty string")
        if isinstance(self.ts, bool) or not isinstance(self.ts, int):
            raise ValueError(f"{where}: ts must be epoch milliseconds (int), got {self.ts!r}")
        if isinstance(self.window_ms, bool) or not isinstance(self.window_ms, int) \
                or self.window_ms <= 0:
            raise ValueError(f"{where}: window_ms must be a positive int, got {self.window_ms!r}")
        for name in ("rule_version", "variant", "channel", "coupon"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{where}: {name} must be a string, got "
                                 f"{getattr(self, name)!r}")

    @staticmethod
    def from_decision(doc: Mapping[str, Any], ts: int,
                      window_ms: int = DEFAULT_WINDOW_MS) -> "Touch":
        """A touch from an action doc (``engage.actions``) or a control audit doc.

        ``ts`` is the decision's event time: the caller knows it (for a
        deferred decision it is when the deferral ended, not ``trigger_ts``).

        >>> t = Touch.from_decision({"action_id": "a-1", "rule_id": "cart", "variant": "B",
        ...     "rule_version": "v", "channel": "push", "payload": {"coupon": "CART10"}}, 5)
        >>> (t.variant, t.coupon, t.sent)
        ('B', 'CART10', True)
        """
        payload = doc.get("payload") or {}
        coupon = payload.get("coupon") if isinstance(payload, Mapping) else None
        return Touch(ts, str(doc.get("action_id") or ""), str(doc.get("rule_id") or ""),
                     str(doc.get("rule_version") or ""), str(doc.get("variant") or ""),
                     str(doc.get("channel") or ""), window_ms,
                     coupon.strip() if isinstance(coupon, str) else "")


def new_ledger() -> dict[str, Any]:
    """An empty ledger: ``{"t": [touches], "o": {order_id: order}}``.

    >>> new_ledger()
    {'t': [], 'o': {}}
    """
    return {"t": [], "o": {}}


def check_ledger(ledger: Any) -> None:
    """Raise ValueError saying what is wrong when ``ledger`` is not a ledger's shape."""
    if not isinstance(ledger, dict) or not isinstance(ledger.get("t"), list) \
            or not isinstance(ledger.get("o"), dict):
        raise ValueError("attribution ledger: expected {'t': [...], 'o': {...}} "
                         f"(see new_ledger()), got {type(ledger).__name__}")


def _key(t: list[Any]) -> tuple[int, int, str]:
    """Recency order of touches: time, then sent over control, then action id."""
    return (t[_TS], t[_SENT], t[_AID])


def record_touch(ledger: dict[str, Any], touch: Touch) -> bool:
    """Remember ``touch``; False when it is not newly held.

    Not held: a replayed decision (its action id is already held), or a touch
    older than every one the cap (:data:`MAX_TOUCHES`) keeps.

    >>> led = new_ledger()
    >>> record_touch(led, Touch(1000, "a-1", "cart")), record_touch(led, Touch(1000, "a-1", "cart"))
    (True, False)
    """
    check_ledger(ledger)
    touch.check()
    touches: list[list[Any]] = ledger["t"]
    if any(t[_AID] == touch.action_id for t in touches):
        return False
    touches.append([touch.ts, touch.action_id, touch.rule_id, touch.rule_version,
                    touch.variant, touch.channel, touch.window_ms, touch.coupon,
                    int(touch.sent)])
    touches.sort(key=_key)
    if len(touches) > MAX_TOUCHES:
        del touches[:len(touches) - MAX_TOUCHES]
        # a touch older than all the ones kept is not held either
        return any(t[_AID] == touch.action_id for t in touches)
    return True


def cents(amount: Any, where: str) -> int:
    """A non-negative money amount in whole cents, or ValueError saying where."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) \
            or amount != amount or amount < 0 or amount > 1e12:
        raise ValueError(f"{where}: amount must be a number from 0 to 1e12, got {amount!r}")
    return round(amount * 100)


def conversion_id(order_id: str, action_id: str) -> str:
    """Deterministic id of the conversion of ``order_id`` credited to ``action_id``.

    >>> conversion_id("o-1", "a-1") == conversion_id("o-1", "a-1") != conversion_id("o-1", "a-2")
    True
    """
    digest = hashlib.sha256(f"{order_id}\x1f{action_id}".encode()).hexdigest()
    return "cv-" + digest[:24]


def iso(ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC string, like the action docs' times."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _norm(code: str) -> str:
    return code.strip().casefold()


def _check_order(kind: str, order_id: Any, ts: Any) -> str:
    """Raise ValueError unless the order event's id and time are usable; returns
    where it happened, for later messages."""
    where = f"{kind} {order_id!r}"
    if not isinstance(order_id, str) or not order_id:
        raise ValueError(f"{where}: order_id must be a non-empty string")
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise ValueError(f"{where}: ts must be epoch milliseconds (int), got {ts!r}")
    return where


def on_order_paid(ledger: dict[str, Any], user_id: str, order_id: str, ts: int, amount: Any,
                  coupon: Any = None) -> list[dict[str, Any]]:
    """Credit an ``order_paid`` to a touch; the conversion records to publish (maybe none).

    The first record, when there is one, is the credited one (coupon match,
    else last touch); the others are uncredited window records of other rules.
    """
    check_ledger(ledger)
    where = _check_order("order_paid", order_id, ts)
    paid = cents(amount, where)
    if coupon is not None and not isinstance(coupon, str):
        raise ValueError(f"{where}: coupon must be a string, got {coupon!r}")
    if order_id in ledger["o"]:
        return []   # the same order again (a re-sent event): it counts once
    eligible = [t for t in ledger["t"] if t[_TS] < ts <= t[_TS] + t[_WIN]]
    if not eligible:
        return []
    code = _norm(coupon) if coupon else ""
    matching = [t for t in eligible if code and t[_COUPON] and _norm(t[_COUPON]) == code]
    credited = max(matching or eligible, key=_key)
    latest_per_rule: dict[str, list[Any]] = {}
    for t in eligible:
        if t[_RULE] != credited[_RULE] and (
                t[_RULE] not in latest_per_rule or _key(t) > _key(latest_per_rule[t[_RULE]])):
            latest_per_rule[t[_RULE]] = t
    chosen = [credited] + [latest_per_rule[r] for r in sorted(latest_per_rule)]
    convs = [[conversion_id(order_id, t[_AID]), list(t),
              ("coupon" if matching else "last_touch") if i == 0 else "window",
              int(i == 0 and bool(matching))] for i, t in enumerate(chosen)]
    until = ts + credited[_WIN]
    keep = max([until] + [t[_TS] + t[_WIN] for t in eligible])
    ledger["o"][order_id] = [ts, paid, 0, until, keep, convs, [], coupon or ""]
    _cap_orders(ledger)
    return [_record(c, user_id, order_id, ts, paid, 0, i == 0, coupon or "")
            for i, c in enumerate(convs)]


def on_order_refunded(ledger: dict[str, Any], user_id: str, order_id: str, ts: int,
                      amount: Any, refund_id: str = "") -> list[dict[str, Any]]:
    """Reverse a credited order, in part or in full; the updated records (maybe none).

    ``refund_id`` (the event's id) recognises a re-sent refund; without one,
    the refund's time and amount stand in for it. Nothing happens for an
    order that was never credited, or a refund after its return period.
    """
    check_ledger(ledger)
    where = _check_order("order_refunded", order_id, ts)
    refund = cents(amount, where)
    order = ledger["o"].get(order_id)
    if order is None or ts > order[_UNTIL]:
        return []
    rid = refund_id or f"{ts}:{refund}"
    if rid in order[_REFUND_IDS]:
        return []
    order[_REFUND_IDS].append(rid)
    del order[_REFUND_IDS][:-MAX_REFUNDS_PER_ORDER]
    before = order[_REFUNDED]
    order[_REFUNDED] = min(order[_PAID], before + refund)
    if order[_REFUNDED] == before:
        return []   # already refunded in full (or a zero refund): nothing changes
    return [_record(c, user_id, order_id, ts, order[_PAID], order[_REFUNDED], i == 0,
                    order[_ORDER_COUPON], kind="refund", refund_id=rid)
            for i, c in enumerate(order[_CONVS])]


def _record(conv: list[Any], user_id: str, order_id: str, ts: int, paid: int, refunded: int,
            credited: bool, coupon: str, kind: str = "conversion",
            refund_id: str = "") -> dict[str, Any]:
    """A conversion record: the conversion's whole current state, so the newest one wins.

    ``ts`` is the order's time in a ``conversion`` record, the refund's in a
    ``refund`` record.
    """
    cid, t, matched_by, redeemed = conv
    doc: dict[str, Any] = {
        "conversion_id": cid,
        "kind": kind,
        "user_id": user_id,
        "order_id": order_id,
        "action_id": t[_AID],
        "rule_id": t[_RULE],
        "rule_version": t[_VER],
        "variant": t[_VAR],
        "channel": t[_CHAN],
        "control": not t[_SENT],
        "touch_ts": iso(t[_TS]),
        "touch_ts_ms": t[_TS],
        "ts": iso(ts),
        "ts_ms": ts,
        "credited": credited,
        "matched_by": matched_by,
        "redeemed": bool(redeemed),
        "coupon": coupon,
        "revenue_cents": paid,
        "refunded_cents": refunded,
        "net_cents": paid - refunded if credited else 0,
        "reversed": refunded >= paid and refunded > 0,
    }
    if kind == "refund":
        doc["refund_id"] = refund_id
    return doc


def _cap_orders(ledger: dict[str, Any]) -> None:
    orders: dict[str, list[Any]] = ledger["o"]
    if len(orders) > MAX_ORDERS:
        oldest = sorted(orders, key=lambda o: (orders[o][_PAID_TS], o))
        for o in oldest[:len(orders) - MAX_ORDERS]:
            del orders[o]


def prune(ledger: dict[str, Any], now_ts: int) -> None:
    """Forget touches whose window closed before ``now_ts``, and orders past their periods.

    Call it with the watermark (event time), e.g. when the customer is
    touched or expired; a ledger only ever shrinks here.

    >>> led = new_ledger(); _ = record_touch(led, Touch(0, "a-1", "r", window_ms=10))
    >>> prune(led, 10); len(led["t"]), prune(led, 11), len(led["t"])
    (1, None, 0)
    """
    check_ledger(ledger)
    ledger["t"] = [t for t in ledger["t"] if t[_TS] + t[_WIN] >= now_ts]
    for o in [o for o, v in ledger["o"].items() if v[_KEEP] < now_ts]:
        del ledger["o"][o]


def next_expiry(ledger: dict[str, Any]) -> int | None:
    """The event time at which :func:`prune` would next drop something, or None when empty."""
    check_ledger(ledger)
    ends = [t[_TS] + t[_WIN] + 1 for t in ledger["t"]]
    ends += [o[_KEEP] + 1 for o in ledger["o"].values()]
    return min(ends) if ends else None


def merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Fold a device's ledger into its customer's (a login linked them): unions, then caps."""
    check_ledger(into)
    check_ledger(other)
    held = {t[_AID] for t in into["t"]}
    into["t"].extend(list(t) for t in other["t"] if t[_AID] not in held)
    into["t"].sort(key=_key)
    del into["t"][:-MAX_TOUCHES]
    for oid, order in other["o"].items():
        mine = into["o"].get(oid)
        if mine is None or order[_REFUNDED] > mine[_REFUNDED]:
            into["o"][oid] = [order[_PAID_TS], order[_PAID], order[_REFUNDED], order[_UNTIL],
                              order[_KEEP], [[c, list(t), m, r] for c, t, m, r in order[_CONVS]],
                              list(order[_REFUND_IDS]), order[_ORDER_COUPON]]
    _cap_orders(into)


def newest(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Each conversion's current state from its records, whatever their order and repeats:
    per ``conversion_id``, the record with the most refunded (then the latest ``ts_ms``).

    >>> a = {"conversion_id": "cv-1", "refunded_cents": 0, "ts_ms": 1}
    >>> b = {"conversion_id": "cv-1", "refunded_cents": 500, "ts_ms": 9}
    >>> newest([b, a, a])["cv-1"]["refunded_cents"]
    500
    """
    out: dict[str, Mapping[str, Any]] = {}
    for rec in records:
        cid = rec["conversion_id"]
        old = out.get(cid)
        if old is None or (rec["refunded_cents"], rec.get("ts_ms", 0)) > (
                old["refunded_cents"], old.get("ts_ms", 0)):
            out[cid] = rec
    return out


def refunded_cents(ledger: dict[str, Any], order_id: str) -> int:
    """Cents refunded so far on a credited order held by the ledger (0 when not held)."""
    order = ledger["o"].get(order_id)
    return order[_REFUNDED] if order is not None else 0


def touches(ledger: dict[str, Any]) -> list[Touch]:
    """The touches held, oldest first, as :class:`Touch` objects (for reading, not the hot path)."""
    check_ledger(ledger)
    return [Touch(t[_TS], t[_AID], t[_RULE], t[_VER], t[_VAR], t[_CHAN], t[_WIN], t[_COUPON])
            for t in ledger["t"]]
