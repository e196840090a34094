"""Builders of contract events for tests (JSON documents and bytes)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson

T0 = 1_790_000_000_000  # 2026-09-21T14:13:20Z
#: Rule files for tests that need the cart reminder and nothing else.
CART_ONLY_RULES = str(Path(__file__).parent / "rules" / "cart_only.yaml")
MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000

_ids = itertools.count(1)


def doc(etype: str, ts: int, user: str | None = None, anon: str | None = None,
        event_id: str | None = None, **props: Any) -> dict[str, Any]:
    """One contract event as a dict."""
    return {"event_id": event_id or f"e-{next(_ids)}", "type": etype, "ts": ts,
            "user_id": user, "anonymous_id": anon, "channel": "web", "properties": props}


def raw(d: dict[str, Any]) -> bytes:
    """A contract event as the bytes a storefront sends."""
    return orjson.dumps(d)


def view(ts: int, user: str | None = None, anon: str | None = None, category: str = "sofa",
         **kw: Any) -> dict[str, Any]:
    return doc("product_view", ts, user, anon, sku=f"{category[:3]}-1", category=category, **kw)


def add(ts: int, user: str | None = None, anon: str | None = None, sku: str = "SOF-1",
        category: str = "sofa", price: float = 499.0, **kw: Any) -> dict[str, Any]:
    return doc("add_to_cart", ts, user, anon, sku=sku, category=category, price=price, **kw)


def paid(ts: int, user: str, order_id: str, amount: float, **kw: Any) -> dict[str, Any]:
    return doc("order_paid", ts, user, None, order_id=order_id, amount=amount, **kw)


def login(ts: int, user: str, anon: str, **kw: Any) -> dict[str, Any]:
    return doc("login", ts, user, anon, **kw)


def counters(state_doc: dict[str, Any]) -> set[str]:
    """Names of every counter with a bucket in a stored state document."""
    return {name for level in state_doc.get("counts", []) for bucket in level.values()
            for name in bucket}


def rule_book(path: str = CART_ONLY_RULES) -> Any:
    """A fixed RuleBook of the rules under ``path``."""
    from engage.rules.book import RuleBook  # noqa: PLC0415
    from engage.rules.loader import load_rules  # noqa: PLC0415

    return RuleBook.fixed(load_rules([path]))
