"""Attribution through the real broker and Redis: a rule file and events in, conversions out.

Last touch, the coupon that beats recency, the window's end, refunds inside
and after the return period, a re-sent order, the control group, and the
receipt that is never credited: read back from ``engage.conversions`` and
the metrics, then in ``engage report`` read straight from the topics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engage import cli
from engage.connectors.kafka import CONVERSIONS_TOPIC, produce_all
from engage.monitoring import metrics

from helpers import DAY, HOUR, T0, add, doc, paid, rule_book, view
from stack_helpers import produce, run_engine, topic_docs

pytestmark = pytest.mark.integration
RULES = str(Path(__file__).parent.parent / "rules" / "attribution.yaml")


def customers_in(arms: list[str]) -> list[tuple[str, str]]:
    """Customer ids whose browse_offer arm is each of ``arms``, in order, with the arm."""
    rule = next(r for r in rule_book(RULES).current.rules if r.id == "browse_offer")
    out: list[tuple[str, str]] = []
    pool = (f"live-{i}" for i in range(10_000))
    for wanted in arms:
        user = next(u for u in pool if (rule.action.bucket("browse_offer", u) == "control")
                    == (wanted == "control"))
        out.append((user, rule.action.bucket("browse_offer", user)))
    return out


def counter(m, *labels: str) -> float:
    return m.labels(*labels)._value.get()


def test_orders_refunds_and_control_are_attributed_through_kafka_and_redis(stack) -> None:
    (coupon_user, coupon_arm), (last_user, _), (late_user, _), (refund_user, refund_arm), \
        (dup_user, _), (control_user, _) = customers_in(
            ["sent", "sent", "sent", "sent", "sent", "control"])
    coupon = {"A": "OFF200", "B": "OFF300"}[coupon_arm]
    before = {
        "conv": counter(metrics.CONVERSIONS, "browse_offer", refund_arm, "email"),
        "ctrl": counter(metrics.CONVERSIONS, "browse_offer", "control", "none"),
        "redeemed": counter(metrics.REDEMPTIONS, "browse_offer", coupon_arm, "email"),
        "refunded": counter(metrics.REFUNDED_REVENUE, "browse_offer", refund_arm, "email"),
        "nudge": counter(metrics.CONVERSIONS, "cart_nudge", "none", "push"),
    }
    events = [
        # the coupon of the browse offer beats the later cart nudge
        view(T0, coupon_user), add(T0 + HOUR, coupon_user),
        paid(T0 + 2 * HOUR, coupon_user, "o-coupon", 250.0, coupon=f" {coupon.lower()} "),
        # no coupon: the last touch (the cart nudge) is credited
        view(T0, last_user), add(T0 + HOUR, last_user),
        paid(T0 + 3 * HOUR, last_user, "o-last", 90.0),
        # an order a day after the 7-day window closed: nothing
        view(T0, late_user), paid(T0 + 8 * DAY, late_user, "o-late", 40.0),
        # refunded in part inside the return period, and again after it
        view(T0, refund_user), paid(T0 + DAY, refund_user, "o-ref", 100.0),
        doc("order_refunded", T0 + 2 * DAY, refund_user, order_id="o-ref", amount=40.0),
        doc("order_refunded", T0 + 9 * DAY, refund_user, order_id="o-ref", amount=60.0),
        # the same order sent twice (a storefront retry with a new event id)
        view(T0, dup_user), paid(T0 + DAY, dup_user, "o-dup", 30.0),
        paid(T0 + DAY + 1000, dup_user, "o-dup", 30.0),
        # held out: never sent, yet its order is attributed for the uplift
        view(T0, control_user), paid(T0 + 2 * DAY, control_user, "o-ctrl", 70.0),
        doc("search", T0 + 12 * DAY, "clock", query="x"),   # event time passes every window
    ]
    # As a storefront sends them: in time order (an event more than the allowed
    # lateness behind its partition would count in lifetime totals only).
    produce(stack, sorted(events, key=lambda e: e["ts"]))
    run_engine(stack, rules=RULES)

    recs = topic_docs(stack, CONVERSIONS_TOPIC)
    by_order: dict[str, list[dict]] = {}
    for r in recs:
        by_order.setdefault(r["order_id"], []).append(r)
    assert set(by_order) == {"o-coupon", "o-last", "o-ref", "o-dup", "o-ctrl"}

    credited, window = by_order["o-coupon"]
    assert (credited["rule_id"], credited["matched_by"], credited["redeemed"]) == (
        "browse_offer", "coupon", True)
    assert credited["variant"] == coupon_arm and credited["revenue_cents"] == 25000
    assert (window["rule_id"], window["credited"], window["net_cents"]) == ("cart_nudge", False, 0)

    credited, window = by_order["o-last"]
    assert (credited["rule_id"], credited["matched_by"], credited["credited"]) == (
        "cart_nudge", "last_touch", True)
    assert (window["rule_id"], window["credited"]) == ("browse_offer", False)

    paid_rec, refund_rec = by_order["o-ref"]          # the late refund changed nothing
    assert paid_rec["kind"] == "conversion" and refund_rec["kind"] == "refund"
    assert (refund_rec["refunded_cents"], refund_rec["net_cents"], refund_rec["reversed"]) == (
        4000, 6000, False)
    assert refund_rec["conversion_id"] == paid_rec["conversion_id"]

    assert len(by_order["o-dup"]) == 1
    (ctrl,) = by_order["o-ctrl"]
    assert ctrl["control"] and ctrl["variant"] == "control" and ctrl["credited"]
    assert not any(r["rule_id"] == "receipt" for r in recs)   # service messages are not touches

    assert counter(metrics.CONVERSIONS, "browse_offer", refund_arm, "email") - before["conv"] >= 2
    assert counter(metrics.CONVERSIONS, "browse_offer", "control", "none") - before["ctrl"] == 1
    assert counter(metrics.REDEMPTIONS, "browse_offer", coupon_arm, "email") \
        - before["redeemed"] == 1
    assert counter(metrics.REFUNDED_REVENUE, "browse_offer", refund_arm, "email") \
        - before["refunded"] == 4000
    assert counter(metrics.CONVERSIONS, "cart_nudge", "none", "push") - before["nudge"] == 1


def test_the_report_reads_the_engines_topics(stack, capsys: pytest.CaptureFixture[str]) -> None:
    users = customers_in(["sent", "sent", "control", "control"])
    events = []
    for i, (user, _) in enumerate(users):
        events.append(view(T0 + i, user))
        if i % 2 == 0:
            events.append(paid(T0 + DAY + i, user, f"o-{i}", 50.0))
    events.append(doc("search", T0 + 12 * DAY, "clock", query="x"))
    produce(stack, sorted(events, key=lambda e: e["ts"]))
    run_engine(stack, rules=RULES)
    assert cli.main(["report", "--kafka-bootstrap", stack.bootstrap, "--format", "json",
                     "--rules", "browse_offer"]) == 0
    report = json.loads(capsys.readouterr().out)
    (rule,) = report["rules"]
    arms = {a["name"]: a for a in rule["arms"]}
    assert arms["control"]["sent"] == 2 and arms["control"]["converted"]["k"] == 1
    assert sum(a["sent"] for n, a in arms.items() if n != "control") == 2
    assert sum(a["converted"]["k"] for n, a in arms.items() if n != "control") == 1
    # A message that is not a record stops the report with where it is, not a traceback.
    produce_all(stack.bootstrap, CONVERSIONS_TOPIC, [(b"x", b"{not json")])
    assert cli.main(["report", "--kafka-bootstrap", stack.bootstrap]) == 2
    err = capsys.readouterr().err
    assert f"{CONVERSIONS_TOPIC}/0@" in err and "not JSON" in err
