"""``engage profile``: one customer's merged view, read from Redis.

Window values are computed at the engine's published event-time clock (or
the customer's last event, whichever is later), so they match what the
engine itself would see now.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from engage.config import Settings
from engage.events import ANON_PREFIX, is_anon_key
from engage.connectors.redis_store import connect, read_clock, read_customer
from engage.rules.decide import iso
from engage.state.customer import CustomerState
from engage.state.profile import Facts, derive


def build_view(settings: Settings, customer_key: str, doc: dict[str, Any],
               clock: int | None) -> dict[str, Any]:
    """The profile as a plain dict (what ``--json`` prints)."""
    cfg = settings.state_config()
    state = CustomerState.from_doc(doc, cfg)
    ref = max(clock or 0, state.max_ts)
    windows = state.windows(cfg, ref)
    spend = state.spend_in(cfg, ref)
    cart = state.cart.view(cfg.cart_abandon_after_ms)
    return {
        "customer": customer_key,
        "ids": {"customer": None if is_anon_key(customer_key) else customer_key,
                "devices": [customer_key[len(ANON_PREFIX):]] if is_anon_key(customer_key)
                else state.anon_ids},
        "as_of": iso(ref) if ref else None,
        "windows": windows,
        "spend": {w: round(v, 2) for w, v in spend.items()},
        "lifetime": {"events": state.lifetime, "orders": state.orders,
                     "spend": state.spend_total / 100,
                     "first_order": iso(state.first_order_ts) if state.first_order_ts else None,
                     "last_order": iso(state.last_order_ts) if state.last_order_ts else None,
                     "late_events": state.late_events},
        "cart": [{"sku": sku, "quantity": line[0], "price": line[1], "category": line[2],
                  "added": iso(line[3])} for sku, line in sorted(cart["lines"].items())],
        "cart_reminder_due": iso(cart["reminder"][0]) if "reminder" in cart else None,
        "last_seen": {t: iso(ts) for t, ts in sorted(state.last_seen.items())},
        "profile": {k: v[0] for k, v in state.profile.items()},
        "consent": {k: v[0] for k, v in state.consent.items()},
        **derived_view(settings, state, ref),
    }


def derived_view(settings: Settings, state: CustomerState, ref: int) -> dict[str, Any]:
    """Stage, tier, RFM and segment as of ``ref``, with when each was entered, and tags.

    Values are derived again at ``ref`` (recency keeps counting after the
    engine's last look at the customer); the stored profile says since when.
    """
    if is_anon_key(state.key):
        return {}
    d = state.derived
    pcfg = settings.profile_config()
    facts = Facts(ref, state.max_ts, state.orders, state.first_order_ts, state.last_order_ts,
                  *state.window_orders(settings.state_config(), pcfg.rfm_window, ref))
    now = derive(facts, pcfg)

    def since(name: str) -> str | None:
        entry = d.get(name)
        return iso(entry[1]) if entry and entry[0] == now[name] else None

    rfm = None
    if now["rfm"] is not None:
        days, freq, money, r, f, m = now["rfm"]
        rfm = {"recency_days": days, "frequency": freq, "monetary": money,
               "scores": {"r": r, "f": f, "m": m}, "window": pcfg.rfm_window}
        if pcfg.rfm_scoring == "population":
            # Relative scores live in the engine's population: show its segment as stored.
            rfm["scores"] = None
            stored = d.get("segment")
            now["segment"] = stored[0] if stored else None
    return {
        "stage": {"name": now["stage"], "since": since("stage")},
        "tier": {"name": now["tier"], "since": since("tier")},
        "rfm": rfm,
        "segment": {"name": now["segment"], "since": since("segment")} if now["segment"] else None,
        "tags": [{"name": t, "since": iso(ts)} for t, ts in sorted(d.get("tags", {}).items())],
        "scores": {name: d.get("scores", {}).get(name, [None])[0]
                   for name in ("churn_risk", "repurchase_30d")},
        # Which model gave each score, and when (event time of the prediction point).
        "models": {name: {"version": entry[2], "scored_at": iso(entry[1])}
                   for name, entry in sorted(d.get("scores", {}).items()) if len(entry) > 2},
    }


def render(view: dict[str, Any]) -> str:
    """Human-readable text of :func:`build_view`."""
    lines = [f"customer  {view['customer']}", f"devices   {', '.join(view['ids']['devices']) or '-'}",
             f"as of     {view['as_of']}"]
    life = view["lifetime"]
    lines.append(f"orders    {life['orders']} (spend {life['spend']}), first {life['first_order'] or '-'}, "
                 f"last {life['last_order'] or '-'}")
    lines.append("spend     " + ", ".join(f"{w}: {v}" for w, v in view["spend"].items()))
    lines.append("windows   (count per window)")
    for name, values in view["windows"].items():
        lines.append(f"  {name:32s} " + "  ".join(f"{w}={v:g}" for w, v in values.items()))
    lines.append(f"cart      {len(view['cart'])} line(s)" +
                 (f", reminder due {view['cart_reminder_due']}" if view["cart_reminder_due"] else ""))
    for line in view["cart"]:
        lines.append(f"  {line['sku']:12s} x{line['quantity']}  {line['price']}  {line['category']}")
    lines.append("last seen")
    for etype, ts in view["last_seen"].items():
        lines.append(f"  {etype:18s} {ts}")
    if view["profile"]:
        lines.append("profile   " + ", ".join(f"{k}={v}" for k, v in view["profile"].items()))
    if view["consent"]:
        lines.append("consent   " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in view["consent"].items()))
    if "stage" in view:
        lines.append(f"stage     {view['stage']['name']} (since {view['stage']['since'] or '-'})")
        lines.append(f"tier      {view['tier']['name']} (since {view['tier']['since'] or '-'})")
        rfm = view["rfm"]
        if rfm:
            scores = rfm["scores"]
            shown = (f"{scores['r']}/{scores['f']}/{scores['m']}" if scores
                     else "relative to the population")
            segment = view["segment"] or {"name": "-", "since": None}
            lines.append(f"rfm       R {rfm['recency_days']} days, F {rfm['frequency']} orders, "
                         f"M {rfm['monetary']} in {rfm['window']}; scores {shown}; segment "
                         f"{segment['name']} (since {segment['since'] or '-'})")
        tags = ", ".join(f"{t['name']} (since {t['since']})" for t in view["tags"])
        lines.append(f"tags      {tags or '-'}")
        models = view.get("models", {})
        scores = ", ".join(
            f"{k}={v}" + (f" ({models[k]['version']}, {models[k]['scored_at']})" if k in models else "")
            for k, v in view["scores"].items() if v is not None)
        lines.append(f"scores    {scores or '- (no model yet)'}")
    return "\n".join(lines)


def show_profile(settings: Settings, some_id: str, as_json: bool = False) -> int:
    """Print the view; exit code 1 when the customer is unknown."""
    client = connect(settings.redis_url or "")
    found = read_customer(client, some_id)
    if found is None:
        print(f"engage profile: no customer or device {some_id!r} in Redis", file=sys.stderr)
        return 1
    key, doc = found
    view = build_view(settings, key, doc, read_clock(client))
    if as_json:
        sys.stdout.write(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(view))
    return 0
