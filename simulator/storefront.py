"""A simulated home-furnishing storefront: a deterministic stream of contract events.

Visitors arrive anonymously, browse categories, search, fill carts; some log
in (linking their device), some order, a few return an item. A small share of
malformed records exercises the dead-letter path. The same seed gives the
same stream, so tests, benchmarks and the demo can all rely on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import orjson

CATEGORIES = {
    "sofa": (399.0, 2499.0), "armchair": (149.0, 899.0), "bed": (299.0, 1999.0),
    "mattress": (199.0, 1499.0), "dining_table": (249.0, 1599.0), "chair": (39.0, 299.0),
    "lamp": (19.0, 249.0), "rug": (49.0, 699.0), "wardrobe": (199.0, 1299.0),
    "sofa_care": (9.0, 49.0), "textiles": (9.0, 129.0), "storage": (19.0, 399.0),
}
STYLES = ("scandinavian", "industrial", "mid_century", "classic", "boho", "minimal")
CHANNELS = ("web", "app", "mini_program")
SEARCHES = ("grey sofa", "oak dining table", "queen bed", "floor lamp", "wool rug",
            "corner sofa", "linen curtains", "sofa cleaner")
REFUND_REASONS = ("size", "quality", "late_delivery", "changed_mind")


@dataclass
class _Visitor:
    anon: str
    user: str | None
    logged_in: bool
    favourite: str
    cart: dict[str, tuple[str, float]] = field(default_factory=dict)


class Storefront:
    """Generates events in event time from ``start_ms``, ``mean_gap_ms`` apart on average.

    >>> s = Storefront(seed=1, customers=50, start_ms=1_790_000_000_000)
    >>> events = list(s.events(100))
    >>> len(events), events[0][1][:12]
    (100, b'{"event_id":')
    """

    def __init__(self, seed: int = 7, customers: int = 1000, start_ms: int = 1_790_000_000_000,
                 mean_gap_ms: int = 1000, malformed_share: float = 0.01,
                 sessions: int = 50, session_events: float = 12.0) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.customers = customers
        self.now = start_ms
        self.mean_gap_ms = mean_gap_ms
        self.malformed_share = malformed_share
        self.seq = 0
        self.visitors: dict[int, _Visitor] = {}
        # Visits, not isolated clicks: a visitor comes, does a dozen things
        # over some minutes, leaves. ``sessions`` visits are open at a time.
        self.target_sessions = max(1, sessions)
        self.session_events = session_events
        self.open_sessions: list[list[int]] = []   # [visitor index, events left]

    def _visitor(self, i: int) -> _Visitor:
        v = self.visitors.get(i)
        if v is None:
            known = self.rng.random() < 0.6
            v = _Visitor(anon=f"d-{self.seed}-{i}", user=f"c-{i}" if known else None,
                         logged_in=False, favourite=self.rng.choice(list(CATEGORIES)))
            self.visitors[i] = v
        return v

    def _event(self, etype: str, v: _Visitor, props: dict[str, Any], with_user: bool) -> dict[str, Any]:
        self.seq += 1
        doc: dict[str, Any] = {
            "event_id": f"e-{self.seed}-{self.seq}",
            "type": etype,
            "ts": self.now,
            "user_id": v.user if with_user else None,
            "anonymous_id": v.anon,
            "channel": self.rng.choice(CHANNELS),
            "properties": props,
        }
        return doc

    def _product(self, category: str) -> dict[str, Any]:
        low, high = CATEGORIES[category]
        return {"sku": f"{category[:3].upper()}-{self.rng.randint(1, 40):03d}",
                "category": category, "price": round(self.rng.uniform(low, high), 2),
                "style": self.rng.choice(STYLES)}

    def _pick_visitor(self) -> _Visitor:
        rng = self.rng
        while len(self.open_sessions) < self.target_sessions:
            length = 1 + int(rng.expovariate(1 / self.session_events))
            self.open_sessions.append([rng.randrange(self.customers), length])
        i = rng.randrange(len(self.open_sessions))
        session = self.open_sessions[i]
        session[1] -= 1
        if session[1] <= 0:
            self.open_sessions[i] = self.open_sessions[-1]
            self.open_sessions.pop()
        return self._visitor(session[0])

    def _next_docs(self) -> list[dict[str, Any]]:
        rng = self.rng
        v = self._pick_visitor()
        user_known = v.user is not None and v.logged_in
        roll = rng.random()
        category = v.favourite if rng.random() < 0.6 else rng.choice(list(CATEGORIES))
        docs: list[dict[str, Any]] = []
        if v.user is not None and not v.logged_in and rng.random() < 0.3:
            v.logged_in = True
            etype = "register" if rng.random() < 0.2 else "login"
            props = {"timezone": "Europe/Berlin", "preferred_channel": rng.choice(("push", "email"))} \
                if etype == "register" else {}
            docs.append(self._event(etype, v, props, with_user=True))
        elif roll < 0.50:
            docs.append(self._event("product_view", v, self._product(category), user_known))
        elif roll < 0.58:
            docs.append(self._event("search", v, {"query": rng.choice(SEARCHES)}, user_known))
        elif roll < 0.64:
            docs.append(self._event("page_view", v, {"url": "/inspiration", "dwell_ms": rng.randint(500, 90000)},
                                    user_known))
        elif roll < 0.76:
            p = self._product(category)
            p["quantity"] = 1
            v.cart[p["sku"]] = (category, p["price"])
            docs.append(self._event("add_to_cart", v, p, user_known))
        elif roll < 0.79 and v.cart:
            sku = rng.choice(sorted(v.cart))
            cat, price = v.cart.pop(sku)
            docs.append(self._event("remove_from_cart", v, {"sku": sku, "category": cat, "price": price},
                                    user_known))
        elif roll < 0.91 and v.cart and user_known:
            items = [{"sku": s, "category": c, "price": p, "quantity": 1} for s, (c, p) in sorted(v.cart.items())]
            amount = round(sum(i["price"] for i in items), 2)
            order_id = f"o-{self.seed}-{self.seq}"
            docs.append(self._event("order_placed", v, {"order_id": order_id, "amount": amount,
                                                        "currency": "EUR", "items": items}, True))
            docs.append(self._event("order_paid", v, {"order_id": order_id, "amount": amount,
                                                      "currency": "EUR", "items": items}, True))
            v.cart.clear()
            if rng.random() < 0.05:
                docs.append(self._event("order_refunded", v, {"order_id": order_id,
                                                              "amount": items[0]["price"],
                                                              "reason": rng.choice(REFUND_REASONS)}, True))
        elif roll < 0.97:
            docs.append(self._event("favorite", v, self._product(category), user_known))
        elif user_known:
            docs.append(self._event("consent_update", v, {"channel": rng.choice(("sms", "email", "push")),
                                                          "granted": rng.random() < 0.8}, True))
        else:
            docs.append(self._event("content_engage", v, {"content_id": "guide-sofa-care",
                                                          "content_type": "guide"}, False))
        return docs

    def _malformed(self) -> bytes:
        self.seq += 1
        kind = self.rng.randrange(5)
        base = {"event_id": f"bad-{self.seed}-{self.seq}", "type": "add_to_cart", "ts": self.now,
                "user_id": "c-bad", "properties": {"sku": "X", "category": "sofa", "price": 10.0}}
        if kind == 0:
            return b'{"event_id": "broken", "type": '
        if kind == 1:
            del base["event_id"]
        elif kind == 2:
            base["type"] = "teleport"
        elif kind == 3:
            base["properties"]["price"] = -5.0
        else:
            base["ts"] = "yesterday-ish"
        return orjson.dumps(base)

    def events(self, n: int) -> Iterator[tuple[bytes, bytes]]:
        """``n`` records as ``(key, value)`` bytes, keyed by user or device id."""
        produced = 0
        while produced < n:
            self.now += max(1, int(self.rng.expovariate(1 / self.mean_gap_ms)))
            if self.rng.random() < self.malformed_share:
                yield b"c-bad", self._malformed()
                produced += 1
                continue
            for doc in self._next_docs():
                if produced >= n:
                    break
                key = (doc["user_id"] or doc["anonymous_id"]).encode()
                yield key, orjson.dumps(doc)
                produced += 1
