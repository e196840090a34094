"""A customer's cart as a set of timestamped operations, not a sequence of mutations.

Events of one customer reach the engine from several input partitions (the
device's key, the customer's key), so their arrival order changes from run
to run. A cart built by mutating in arrival order would differ too, and so
would the reminder it causes. Here the cart is a pure function of the *set*
of operations: line quantity is the sum of the adds and removes of a SKU
after its last checkout, so any arrival order, any replay, and any merge of
a device's cart gives the same cart.

Reminders are decided "as of" their due time: only operations and checkouts
stamped at or before it count. The watermark guarantees that every on-time
event stamped before the due time has arrived when the reminder is decided,
and events stamped after it are ignored, so the decision is the same in every
run.

Checkouts are kept raw while a pending reminder could still need them (one
abandonment delay below the watermark), then folded into per-SKU settle
points, which only drop operations no reminder can look at any more.
"""

from __future__ import annotations

from typing import Any, Sequence

#: How many per-SKU settle points are kept (the most recent ones).
SETTLED_SKUS = 64
_FOREVER = 2 ** 62

Op = list[Any]
"""``[ts, delta, event_id, price, category]``; delta > 0 for adds."""


class Cart:
    """Cart operations and checkouts of one customer.

    >>> c = Cart()
    >>> c.add("S1", 100, 1, "e1", 9.5, "lamp")
    >>> c.checkout(200, None)
    >>> c.add("S2", 150, 1, "e2", 20.0, "rug")   # arrives late, but before the checkout
    >>> sorted(c.lines(10**9))
    []
    >>> c.add("S3", 300, 2, "e3", 5.0, "rug")
    >>> c.lines(10**9)
    {'S3': [2, 5.0, 'rug', 300]}
    """

    __slots__ = ("ops", "checkouts", "settled", "settled_all", "reminded", "last_order", "_view")

    def __init__(self) -> None:
        self.ops: dict[str, list[Op]] = {}
        self.checkouts: list[list[Any]] = []   # [ts, [skus] or None], not yet folded
        self.settled: dict[str, int] = {}      # sku -> latest folded checkout of it
        self.settled_all = 0                   # latest folded checkout without items
        self.reminded = 0                      # due time of the last reminder decided
        self.last_order = 0                    # latest checkout ever (a max register)
        # The view as of "now" only changes when the cart does: it is cached
        # because every state write of the customer stores it.
        self._view: dict[str, Any] | None = None

    # ------------------------------------------------------------------ updates
    def add(self, sku: str, ts: int, qty: int, event_id: str, price: float, category: str) -> None:
        """An add (qty > 0) or a remove (qty < 0)."""
        if ts <= self._settle_point(sku):
            return
        self._view = None
        ops = self.ops.setdefault(sku, [])
        if any(op[2] == event_id for op in ops):
            return  # the same event twice (a re-sent record): once is enough
        ops.append([ts, qty, event_id, price, category])

    def checkout(self, ts: int, skus: list[str] | None) -> None:
        """An order at ``ts`` settles what was in the cart before it (or only ``skus``)."""
        entry = [ts, sorted(set(skus)) if skus else None]
        self._view = None
        self.last_order = max(self.last_order, ts)
        if entry not in self.checkouts:
            self.checkouts.append(entry)

    def merge(self, other: "Cart") -> None:
        """Union with another cart (a device's, at login)."""
        self._view = None
        for sku, ops in other.ops.items():
            for op in ops:
                self.add(sku, op[0], op[1], op[2], op[3], op[4])
        for ts, skus in other.checkouts:
            self.checkout(ts, skus)
        for sku, ts in other.settled.items():
            self._settle(sku, ts)
        self.settled_all = max(self.settled_all, other.settled_all)
        self.reminded = max(self.reminded, other.reminded)
        self.last_order = max(self.last_order, other.last_order)
        self._drop_settled()

    def mark_reminded(self, due: int) -> None:
        """A reminder due at ``due`` was decided; none before it will be."""
        self.reminded = max(self.reminded, due)
        self._view = None

    def compact(self, below: int) -> None:
        """Fold checkouts stamped before ``below`` into settle points.

        Call with ``watermark - abandonment delay``: no pending reminder can
        look further back, and no on-time event can arrive from before the
        watermark, so folding changes no answer, only the memory used.
        """
        keep = []
        for ts, skus in self.checkouts:
            if ts >= below:
                keep.append([ts, skus])
            elif skus is None:
                self.settled_all = max(self.settled_all, ts)
            else:
                for sku in skus:
                    self._settle(sku, ts)
        self.checkouts = keep
        self._drop_settled()

    def _settle(self, sku: str, ts: int) -> None:
        if ts > self.settled.get(sku, 0):
            self.settled[sku] = ts

    def _settle_point(self, sku: str) -> int:
        return max(self.settled_all, self.settled.get(sku, 0))

    def _drop_settled(self) -> None:
        for sku in list(self.ops):
            point = self._settle_point(sku)
            ops = [op for op in self.ops[sku] if op[0] > point]
            if ops:
                self.ops[sku] = ops
            else:
                del self.ops[sku]
        # Only now, with what they settled already dropped, may the oldest
        # settle points go (a big order would otherwise bring lines back).
        while len(self.settled) > SETTLED_SKUS:
            oldest = min(self.settled, key=lambda s: (self.settled[s], s))
            del self.settled[oldest]

    # ------------------------------------------------------------------ views
    def _cleared_at(self, sku: str, as_of: int) -> int:
        point = self._settle_point(sku)
        for ts, skus in self.checkouts:
            if ts <= as_of and ts > point and (skus is None or sku in skus):
                point = ts
        return point

    def _live(self, as_of: int) -> dict[str, list[Op]]:
        """Per SKU, the operations still counting at ``as_of`` (net quantity > 0)."""
        out: dict[str, list[Op]] = {}
        for sku, ops in self.ops.items():
            cleared = self._cleared_at(sku, as_of)
            live = [op for op in ops if cleared < op[0] <= as_of]
            if live and sum(op[1] for op in live) > 0:
                out[sku] = live
        return out

    def lines(self, as_of: int) -> dict[str, list[Any]]:
        """``{sku: [quantity, price, category, last_ts]}`` as of event time ``as_of``."""
        return self._lines(self._live(as_of)) if self.ops else {}

    @staticmethod
    def _lines(live: dict[str, list[Op]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for sku, ops in live.items():
            last = max(ops, key=lambda op: (op[0], op[2]))
            adds = [op for op in ops if op[1] > 0]
            priced = max(adds, key=lambda op: (op[0], op[2])) if adds else last
            out[sku] = [sum(op[1] for op in ops), priced[3], priced[4], last[0]]
        return out

    def trigger(self, as_of: int) -> tuple[int, list[str]] | None:
        """The latest add still in the cart at ``as_of`` and the adds behind it, if any."""
        return self._trigger(self._live(as_of)) if self.ops else None

    @staticmethod
    def _trigger(live: dict[str, list[Op]]) -> tuple[int, list[str]] | None:
        adds = sorted((op for ops in live.values() for op in ops if op[1] > 0),
                      key=lambda op: (op[0], op[2]))
        if not adds:
            return None
        return adds[-1][0], [op[2] for op in adds][-10:]

    def last_checkout(self, as_of: int) -> int:
        """Event time of the latest order at or before ``as_of`` (0 when none)."""
        if self.last_order <= as_of:
            return self.last_order
        times = [ts for ts, _ in self.checkouts] + list(self.settled.values()) + [self.settled_all]
        return max((t for t in times if t <= as_of), default=0)

    def view(self, delay_ms: int) -> dict[str, Any]:
        """What readers see (and Redis stores): lines, the pending reminder, the last order.

        As of now, i.e. after every operation recorded. Only meaning, no
        bookkeeping: two runs that saw the same events store the same view,
        however their compaction went. Do not mutate the result.
        """
        if self._view is None:
            live = self._live(_FOREVER) if self.ops else {}
            out: dict[str, Any] = {"lines": self._lines(live) if live else {}}
            trigger = self._trigger(live) if live else None
            if trigger is not None and trigger[0] + delay_ms > self.reminded:
                out["reminder"] = [trigger[0] + delay_ms, trigger[1]]
            if self.reminded:
                out["reminded"] = self.reminded
            if self.last_order:
                out["last_checkout"] = self.last_order
            self._view = out
        return self._view

    @staticmethod
    def from_view(view: dict[str, Any]) -> "Cart":
        """A cart rebuilt from a stored view (bootstrap from another deployment)."""
        c = Cart()
        for sku, (qty, price, category, ts) in view.get("lines", {}).items():
            c.ops[sku] = [[ts, qty, f"bootstrap:{sku}@{ts}", price, category]]
        c.reminded = view.get("reminded", 0)
        c.last_order = view.get("last_checkout", 0)
        return c

    # ------------------------------------------------------------------ storage
    def __getstate__(self) -> tuple:
        return (self.ops, self.checkouts, self.settled, self.settled_all, self.reminded,
                self.last_order)

    def __setstate__(self, state: Sequence[Any]) -> None:
        (self.ops, self.checkouts, self.settled, self.settled_all, self.reminded,
         self.last_order) = state
        self._view = None

    def __reduce__(self) -> tuple:
        # Explicit, so pickling works the same compiled (mypyc) or not.
        return (_cart_from_state, (self.__getstate__(),))


def _cart_from_state(state: Sequence[Any]) -> Cart:
    cart = Cart()
    cart.__setstate__(state)
    return cart
