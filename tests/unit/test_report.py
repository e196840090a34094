"""engage report: known effects recovered, counts by hand, renderers, screenshot, command."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import orjson
import pytest

from engage import cli
from engage.attribution.ledger import DAY_MS, Touch, iso, new_ledger, on_order_paid, \
    on_order_refunded, record_touch
from engage.report import (Report, build_report, chromium_binary, main, render_html,
                           render_json, render_png, render_text)
from engage.simulator.uplift import simulate

T0 = 1_793_491_200_000   # 2026-11-01T00:00:00Z
H = 3_600_000


def tagged(docs: list[dict], name: str) -> list[tuple[str, dict]]:
    return [(f"{name}:{i}", d) for i, d in enumerate(docs, 1)]


@pytest.fixture(scope="module")
def simulated() -> tuple[Report, dict[str, float]]:
    run = simulate(customers=40_000, seed=7)
    report = build_report(tagged(run.actions, "a"), tagged(run.audit, "b"),
                          tagged(run.conversions, "c"))
    return report, run.true_rates


def test_the_report_recovers_the_simulated_effects_within_their_intervals(simulated) -> None:
    report, truth = simulated
    (rule,) = report.rules
    arms = {a.name: a for a in rule.arms}
    assert list(arms) == ["control", "A", "B"]
    for name, arm in arms.items():   # every arm's rate covers its true rate
        assert arm.converted.lo <= truth[name] <= arm.converted.hi, name
    b_vs_a = arms["B"].vs_baseline
    assert arms["B"].baseline == "A" and b_vs_a is not None
    assert b_vs_a.lo <= truth["B"] - truth["A"] <= b_vs_a.hi and b_vs_a.verdict == "better"
    a_vs_control = arms["A"].vs_control
    assert a_vs_control is not None and a_vs_control.verdict == "better"
    assert a_vs_control.lo <= truth["A"] - truth["control"] <= a_vs_control.hi
    b_vs_control = arms["B"].vs_control
    assert b_vs_control.lo <= truth["B"] - truth["control"] <= b_vs_control.hi
    # B carries the coupon, used on 60% of its orders: 15% x 0.6 = 9% redeemed
    assert arms["B"].redeemed.lo <= 0.09 <= arms["B"].redeemed.hi
    assert arms["A"].redeemed is None and arms["control"].redeemed is None
    assert set(rule.suppressed) == {"cap", "quiet_hours", "consent", "conflict"}
    assert report.unmatched_conversions == 0


def test_no_effect_gives_no_verdict_of_difference() -> None:
    run = simulate(customers=20_000, seed=3, rates={"A": 0.1, "B": 0.1, "control": 0.1})
    arms = {a.name: a for a in build_report(tagged(run.actions, "a"), tagged(run.audit, "b"),
                                            tagged(run.conversions, "c")).rules[0].arms}
    assert arms["B"].vs_baseline.verdict == "unclear"
    assert arms["A"].vs_control.verdict == arms["B"].vs_control.verdict == "unclear"


def action(aid: str, rule: str, variant: str | None, ts: int, coupon: str | None = None,
           reason: str | None = None) -> dict:
    doc = {"action_id": aid, "rule_id": rule, "rule_version": "v", "user_id": "c-1",
           "channel": "push", "payload": {"coupon": coupon} if coupon else {},
           "decided_at": iso(ts), "trigger_ts": iso(ts), "trigger_event_ids": [],
           "explain": {}}
    if variant:
        doc["variant"] = variant
    if reason:
        doc["reason"] = reason
    return doc


def small_case() -> tuple[list, list, list]:
    """Two rules on one customer and a few others, counted by hand below."""
    actions = [action("a-1", "cart", "A", T0), action("a-2", "cart", "B", T0, coupon="CART10"),
               action("a-2", "cart", "B", T0, coupon="CART10"),        # the same action twice
               action("a-3", "cart", "B", T0 + DAY_MS, coupon="CART10"),
               action("a-4", "content", None, T0 + 2 * H)]
    audit = [action("a-5", "cart", "control", T0, reason="control"),
             action("a-6", "cart", "A", T0, reason="cap"),
             action("a-6", "cart", "A", T0, reason="cap"),                # audited twice
             action("a-7", "cart", "B", T0, reason="quiet_hours")]
    conv: list[dict] = []
    # customer of a-1 (A) and a-4 (content): the order goes to the later a-4
    led = new_ledger()
    record_touch(led, Touch.from_decision(actions[0], T0))
    record_touch(led, Touch.from_decision(actions[4], T0 + 2 * H))
    conv += on_order_paid(led, "c-1", "o-1", T0 + 3 * H, 100)
    # a-2 (B, coupon): redeemed, then refunded by 40 of 250
    led = new_ledger()
    record_touch(led, Touch.from_decision(actions[1], T0))
    conv += on_order_paid(led, "c-2", "o-2", T0 + H, 250, coupon="CART10")
    conv += on_order_refunded(led, "c-2", "o-2", T0 + 2 * H, 40, "e-r")
    # a-3 (B): ordered, then refunded in full: not a conversion
    led = new_ledger()
    record_touch(led, Touch.from_decision(actions[3], T0 + DAY_MS))
    conv += on_order_paid(led, "c-3", "o-3", T0 + DAY_MS + H, 80)
    conv += on_order_refunded(led, "c-3", "o-3", T0 + DAY_MS + 2 * H, 80, "e-r3")
    # a-5 (control) bought anyway
    led = new_ledger()
    record_touch(led, Touch.from_decision(audit[0], T0))
    conv += on_order_paid(led, "c-5", "o-5", T0 + H, 60)
    return actions, audit, conv + conv[:2]        # records delivered twice change nothing


def test_counts_by_hand_last_touch_and_window_bases() -> None:
    actions, audit, conv = small_case()
    report = build_report(tagged(actions, "a"), tagged(audit, "b"), tagged(conv, "c"))
    rules = {r.rule_id: r for r in report.rules}
    cart = {a.name: a for a in rules["cart"].arms}
    assert [a.name for a in rules["cart"].arms] == ["control", "A", "B"]
    assert (cart["A"].sent, cart["A"].converted.k) == (1, 0)     # its order went to a-4
    assert (cart["B"].sent, cart["B"].converted.k) == (2, 1)     # a-3 refunded in full
    assert cart["B"].revenue_cents == 21000 and cart["B"].revenue_per_message_cents == 10500
    assert cart["B"].redeemed.k == 1 and cart["A"].redeemed is None
    assert (cart["control"].sent, cart["control"].converted.k) == (1, 1)
    assert rules["cart"].suppressed == {"cap": 1, "quiet_hours": 1}
    content = rules["content"].arms[0]
    assert (content.name, content.sent, content.converted.k, content.revenue_cents) == (
        "", 1, 1, 10000)
    assert cart["B"].trend == [("2026-11-01", 1, 1), ("2026-11-02", 1, 0)]
    window = build_report(tagged(actions, "a"), tagged(audit, "b"), tagged(conv, "c"),
                          basis="window")
    cart_w = {a.name: a for a in window.rules[0].arms}
    assert cart_w["A"].converted.k == 1 and cart_w["A"].revenue_cents == 0


def test_filters_by_rule_and_since() -> None:
    actions, audit, conv = small_case()
    only = build_report(tagged(actions, "a"), tagged(audit, "b"), tagged(conv, "c"),
                        rules=["content"])
    assert [r.rule_id for r in only.rules] == ["content"] and only.unmatched_conversions > 0
    later = build_report(tagged(actions, "a"), tagged(audit, "b"), tagged(conv, "c"),
                         since=T0 + H)
    arms = {a.name: a.sent for r in later.rules for a in r.arms}
    assert arms == {"B": 1, "": 1}


def test_renderers(tmp_path: Path) -> None:
    actions, audit, conv = small_case()
    report = build_report(tagged(actions, "a"), tagged(audit, "b"), tagged(conv, "c"))
    text = io.StringIO()
    render_text(report, text)
    assert "cart" in text.getvalue() and "suppressed: cap 1, quiet_hours 1" in text.getvalue()
    js = io.StringIO()
    render_json(report, js)
    assert json.loads(js.getvalue())["rules"][0]["rule_id"] == "cart"
    page = io.StringIO()
    render_html(report, page)
    doc = page.getvalue()
    assert doc.count("<svg") == 4 and "<script" not in doc and "<link" not in doc
    # self-contained: the only URL is the SVG namespace, which is never fetched
    assert set(re.findall(r"https?://[^\s\"'<>]+", doc)) == {"http://www.w3.org/2000/svg"}


def test_html_escapes_names() -> None:
    report = build_report([("a:1", action("a-1", "<b>x</b>", "A&B", T0))], [], [])
    page = io.StringIO()
    render_html(report, page)
    assert "<b>x</b>" not in page.getvalue() and "&lt;b&gt;x&lt;/b&gt;" in page.getvalue()


def test_the_html_renders_headless_to_a_readable_png(simulated, tmp_path: Path) -> None:
    if chromium_binary() is None:
        pytest.skip("no chromium on PATH to render the page (Debian: apt-get install chromium)")
    report, _ = simulated
    html_path, png_path = tmp_path / "report.html", tmp_path / "report.png"
    with open(html_path, "w") as fh:
        render_html(report, fh)
    render_png(str(html_path), str(png_path), 1180, 820)
    data = png_path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000   # drawn, not a blank page
    keep = os.environ.get("ENGAGE_REPORT_SCREENSHOT")
    if keep:   # for a person to look at
        shutil.copy(png_path, keep)


def write_jsonl(path: Path, docs: list[dict]) -> str:
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    return str(path)


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    actions, audit, conv = small_case()
    a = write_jsonl(tmp_path / "actions.jsonl", actions)
    b = write_jsonl(tmp_path / "audit.jsonl", audit)
    c = write_jsonl(tmp_path / "conv.jsonl", conv)
    assert cli.main(["report", "--actions", a, "--audit", b, "--conversions", c,
                     "--format", "json", "--rules", "cart"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["rule_id"] for r in out["rules"]] == ["cart"]
    assert cli.main(["report", "--actions", a, "--audit", b, "--since", "2026-11-02"]) == 0
    assert "cart" in capsys.readouterr().out
    assert cli.main(["report", "--actions", a, "--since", "1h", "--format", "html"]) == 0
    assert capsys.readouterr().out.startswith("<!doctype html>")


@pytest.mark.parametrize("line, message", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"hello": 1}', "neither an action"),
    (b'{"action_id": "a", "rule_id": "r", "trigger_ts": "soon"}', "trigger_ts"),
])
def test_bad_lines_are_refused_with_file_and_line(tmp_path: Path, line: bytes,
                                                  message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n" + line + b"\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:2.*{message}"):
        main([str(bad)], None, None, "text", io.StringIO())


def test_the_command_says_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report"]) == 2
    assert "--actions" in capsys.readouterr().err
    assert cli.main(["report", "--actions", "/nonexistent.jsonl"]) == 2
