"""Attribution through the engine's own dataflow, on a replay (``engage replay``).

A simulated population meets a rule with variants A and B and a control
group; each customer orders within the window with a known probability per
arm (B converts 5 points better than A, control 3 points worse than A). The
replay decides, attributes and publishes conversion records; the report
built from its output recovers the effects within their intervals, and the
credited conversions are exactly the ones a brute-force reading of the
generated events calls for.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import orjson
import pytest

from engage import cli
from engage.replay import replay
from engage.report import build_report

from helpers import DAY, HOUR, T0, doc, paid, rule_book, view

RULES = str(Path(__file__).parent.parent / "rules" / "attribution.yaml")
TRUE_RATES = {"A": 0.10, "B": 0.15, "control": 0.07}
COUPONS = {"A": "OFF200", "B": "OFF300"}
CUSTOMERS = 8000


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The events file, and what each customer did (arm, ordered in window, coupon used)."""
    rng = random.Random(20261202)
    rule = next(r for r in rule_book(RULES).current.rules if r.id == "browse_offer")
    events, truth = [], {}
    for i in range(CUSTOMERS):
        user = f"c{i}"
        arm = rule.action.bucket("browse_offer", user)
        start = T0 + i * 30_000
        events.append(view(start, user))
        ordered = rng.random() < TRUE_RATES[arm]
        coupon = COUPONS.get(arm) if ordered and rng.random() < 0.5 else None
        if ordered:
            at = start + rng.randrange(HOUR, 7 * DAY)          # inside the 7-day window
            events.append(paid(at, user, f"o{i}", 120.0, **({"coupon": coupon} if coupon else {})))
            if rng.random() < 0.1:                               # a tenth send it all back
                events.append(doc("order_refunded", at + DAY, user, order_id=f"o{i}",
                                  amount=120.0))
        elif rng.random() < 0.05:
            # ordered, but after the window closed: no conversion
            events.append(paid(start + 9 * DAY, user, f"late{i}", 80.0))
        truth[user] = (arm, ordered, coupon)
    path = tmp_path_factory.mktemp("attribution") / "events.jsonl"
    events.sort(key=lambda e: e["ts"])
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return {"path": str(path), "truth": truth, "result": replay(str(path), RULES)}


def test_the_replay_credits_exactly_the_orders_in_each_window(population) -> None:
    result, truth = population["result"], population["truth"]
    latest = {}
    for rec in result.conversions:
        if rec["refunded_cents"] >= latest.get(rec["conversion_id"], {}).get("refunded_cents", -1):
            latest[rec["conversion_id"]] = rec
    credited = {r["user_id"]: r for r in latest.values() if r["credited"]}
    expected = {u for u, (_, ordered, _) in truth.items() if ordered}
    assert set(credited) == expected
    for user, rec in credited.items():
        arm, _, coupon = truth[user]
        assert rec["rule_id"] == "browse_offer" and (rec["variant"] or "control") == arm
        assert rec["control"] == (arm == "control")
        assert rec["redeemed"] == (coupon is not None)
        assert rec["revenue_cents"] == 12000
        assert rec["net_cents"] in (0, 12000) and rec["reversed"] == (rec["net_cents"] == 0)
    # receipts are service messages: never a touch, never credited
    assert not any(r["rule_id"] == "receipt" for r in result.conversions)


def test_the_report_of_a_replay_recovers_the_true_effects(population) -> None:
    result = population["result"]
    report = build_report([("r", d) for d in result.actions], [("r", d) for d in result.suppressed],
                          [("r", d) for d in result.conversions], basis="window")
    rule = next(r for r in report.rules if r.rule_id == "browse_offer")
    arms = {a.name: a for a in rule.arms}
    assert set(arms) == {"A", "B", "control"}
    for name, arm in arms.items():
        # refunded orders in full are reversed conversions: a tenth of each arm's
        assert arm.converted.lo <= TRUE_RATES[name] * 0.9 <= arm.converted.hi, name
    b_vs_a = arms["B"].vs_baseline
    assert b_vs_a.lo <= 0.05 * 0.9 <= b_vs_a.hi and b_vs_a.verdict == "better"
    a_vs_control = arms["A"].vs_control
    assert a_vs_control.lo <= 0.03 * 0.9 <= a_vs_control.hi and a_vs_control.verdict == "better"
    assert arms["B"].redeemed is not None and arms["control"].redeemed is None
    assert report.unmatched_conversions == 0


def test_replay_json_feeds_the_report_command(population, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from engage.replay import print_result

    out = io.StringIO()
    print_result(population["result"], out, as_json=True)
    lines = [orjson.loads(x) for x in out.getvalue().splitlines()]
    assert sum("conversion_id" in x for x in lines) == len(population["result"].conversions)
    summary = lines[-1]["attribution"]["browse_offer"]
    assert summary["control"]["touches"] == sum(
        1 for arm, _, _ in population["truth"].values() if arm == "control")
    path = tmp_path / "replay.jsonl"
    path.write_text(out.getvalue())
    assert cli.main(["report", "--actions", str(path), "--format", "json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    arms = {a["name"]: a for r in report["rules"] if r["rule_id"] == "browse_offer"
            for a in r["arms"]}
    assert arms["B"]["converted"]["k"] == summary["B"]["converted"]


def test_the_same_replay_twice_gives_the_same_records(population) -> None:
    again = replay(population["path"], RULES)
    key = lambda r: (r["conversion_id"], r["kind"], r["refunded_cents"])   # noqa: E731
    assert sorted(map(key, again.conversions)) == sorted(
        map(key, population["result"].conversions))
