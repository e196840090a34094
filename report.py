"""``engage report``: what each rule caused, per variant, from its actions, audit and conversions.

Reads three streams the engine writes, from its Kafka topics or from files
(``engage replay --json`` prints all three):
action docs (``engage.actions``: messages sent), audit docs
(``engage.audit``: decisions not sent, with their ``reason``; ``control``
ones are the held-out group) and conversion records
(:mod:`engage.attribution.ledger`). For every rule and arm (variant, or
``control``) it gives:

* **sent**: touches of the arm (messages sent; for ``control``, decisions
  held out), deduplicated by ``action_id``;
* **converted**: touches followed by an order in their attribution window and
  not refunded in full, with the Wilson 95% interval of the rate;
* **uplift**: each variant against ``control``, and each variant against the
  rule's first variant (B against A), as a difference of rates with
  Newcombe's hybrid score interval and a verdict read from the interval
  (:mod:`engage.attribution.stats`);
* **redemption rate** (touches whose coupon was used on a credited order,
  over touches; only for arms whose messages carried a coupon) and
  **revenue per message** (credited revenue net of refunds, over touches);
* the **suppression breakdown** (audit reasons other than ``control``) and a
  **daily trend** (conversion rate by the touch's UTC day).

*Basis.* ``last_touch`` (the default) counts a touch as converted when it was
credited with the order (coupon match, else the most recent touch):
conversions and revenue add up without double counting across rules.
``window`` counts it converted when an order fell in its window at all,
credited or not: use it for uplift when rules overlap, since under last touch
a later message of another rule can take a control customer's order as easily
as a treated one's, but the treated customer's used-up caps make that later
message rarer, which favours the treated arm.

*Comparability.* The control group is decided before consent, quiet hours
and caps; the sent arms are what passed them. Where many decisions are
suppressed, the sent customers are a selected group; the suppression
breakdown beside each rule shows how much that can matter.

Times are event time, read from the docs (``trigger_ts``, or the end of a
deferral); nothing here reads the clock except a ``--since`` duration, which
counts back from the newest touch in the input.
"""

from __future__ import annotations

import html
import math
import os
import shutil
import subprocess
import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, TextIO

import orjson

from engage.attribution.ledger import CONTROL, newest
from engage.attribution.stats import Rate, Uplift, ratio

DAY_MS = 86_400_000
BASES = ("last_touch", "window")
FORMATS = ("text", "json", "html")


# ---------------------------------------------------------------- reading
def parse_time(value: Any, where: str) -> int:
    """Epoch ms from an ISO 8601 string (``Z`` or an offset) or an int; ValueError saying where.

    >>> parse_time("2026-11-22T00:00:00Z", "x"), parse_time(5, "x")
    (1795305600000, 5)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            pass
        else:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return int(dt.timestamp() * 1000)
    raise ValueError(f"{where}: expected an ISO 8601 time or epoch milliseconds, got {value!r}")


def touch_time(doc: Mapping[str, Any], where: str) -> int:
    """When a decision touched the customer, in event time: a deferral's end, else its trigger."""
    deferred = (doc.get("explain") or {}).get("deferred") if isinstance(
        doc.get("explain"), Mapping) else None
    if isinstance(deferred, Mapping) and deferred.get("until"):
        return parse_time(deferred["until"], f"{where}: explain.deferred.until")
    return parse_time(doc.get("trigger_ts"), f"{where}: trigger_ts")


def read_jsonl(path: str) -> Iterable[tuple[str, dict[str, Any]]]:
    """``(file:line, doc)`` for every JSON object line of ``path`` (blank lines skipped)."""
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
            if not isinstance(doc, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(doc).__name__}")
            yield f"{path}:{n}", doc


def sort_docs(docs: Iterable[tuple[str, dict[str, Any]]]
              ) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]], list[tuple[str, dict]]]:
    """Split docs by shape into (actions, audit, conversions), whichever file they came from.

    A conversion record has a ``conversion_id``, an audit doc a ``reason``, an
    action an ``action_id``; ``engage replay --json`` lines (``sent``) and its
    summary line fit in as they are.
    """
    actions, audit, conversions = [], [], []
    for where, doc in docs:
        if "conversion_id" in doc:
            conversions.append((where, doc))
        elif "reason" in doc and "action_id" in doc:
            audit.append((where, doc))
        elif "action_id" in doc:
            actions.append((where, doc))
        elif "summary" not in doc:
            raise ValueError(f"{where}: neither an action, an audit doc nor a conversion record")
    return actions, audit, conversions


# ---------------------------------------------------------------- the report
@dataclass
class Arm:
    """One arm of one rule: a variant, ``control``, or "" for a rule without variants."""

    name: str
    sent: int
    converted: Rate
    redeemed: Rate | None
    revenue_cents: int
    revenue_per_message_cents: float | None
    vs_control: Uplift | None = None
    vs_baseline: Uplift | None = None
    baseline: str | None = None
    trend: list[tuple[str, int, int]] = field(default_factory=list)  # (day, touches, converted)


@dataclass
class RuleReport:
    """One rule: its arms, and its decisions suppressed by reason."""

    rule_id: str
    arms: list[Arm]
    suppressed: dict[str, int]


@dataclass
class Report:
    """Every rule's report, and what the input held."""

    basis: str
    since: str | None
    first_touch: str | None
    last_touch: str | None
    rules: list[RuleReport]
    unmatched_conversions: int

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (rates as fractions, money in cents)."""
        return asdict(self)


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def _arm_order(name: str) -> tuple[int, str]:
    """Control first, then variants by name: the order of every table and chart."""
    return (0 if name == CONTROL else 1, name)


def build_report(actions: Iterable[tuple[str, Mapping[str, Any]]],
                 audit: Iterable[tuple[str, Mapping[str, Any]]],
                 conversions: Iterable[tuple[str, Mapping[str, Any]]],
                 since: int | None = None, rules: Iterable[str] | None = None,
                 basis: str = "last_touch") -> Report:
    """The report of ``(where, doc)`` streams; ``since`` (epoch ms) and ``rules`` filter touches."""
    if basis not in BASES:
        raise ValueError(f"report: basis must be one of {', '.join(BASES)}, got {basis!r}")
    wanted = set(rules) if rules is not None else None
    # action_id -> (rule, arm, touch ms, carried a coupon)
    touches: dict[str, tuple[str, str, int, bool]] = {}
    suppressed: dict[str, Counter[str]] = defaultdict(Counter)
    seen_audit: set[tuple[str, str]] = set()

    def keep(rule: str, ts: int) -> bool:
        return (wanted is None or rule in wanted) and (since is None or ts >= since)

    for where, doc in actions:
        if doc.get("transactional") is True:
            continue   # a receipt or a shipping note: not a touch (see the ledger)
        rule, aid = _text(doc, "rule_id", where), _text(doc, "action_id", where)
        ts = touch_time(doc, where)
        payload = doc.get("payload")
        coupon = isinstance(payload, Mapping) and bool(payload.get("coupon"))
        if keep(rule, ts):
            touches.setdefault(aid, (rule, str(doc.get("variant") or ""), ts, coupon))
    for where, doc in audit:
        rule, aid = _text(doc, "rule_id", where), _text(doc, "action_id", where)
        reason = _text(doc, "reason", where)
        ts = touch_time(doc, where)
        if not keep(rule, ts):
            continue
        if reason == CONTROL:
            if doc.get("transactional") is not True:   # as for actions: never a touch
                touches.setdefault(aid, (rule, CONTROL, ts, False))
        elif (aid, reason) not in seen_audit:
            seen_audit.add((aid, reason))
            suppressed[rule][reason] += 1

    # Per conversion id, its current state: the record with the most refunded.
    for where, rec in conversions:
        _text(rec, "conversion_id", where)
        for name in ("refunded_cents", "net_cents"):
            if not isinstance(rec.get(name), int):
                raise ValueError(f"{where}: {name} must be an integer number of cents")
    state = newest(rec for _, rec in conversions)
    converted: set[str] = set()
    redeemed: set[str] = set()
    revenue: Counter[str] = Counter()
    unmatched = 0
    for rec in state.values():
        aid = rec.get("action_id")
        if aid not in touches:
            unmatched += 1
            continue
        if rec.get("reversed"):
            continue
        if rec.get("credited"):
            revenue[aid] += rec["net_cents"]
            if rec.get("redeemed"):
                redeemed.add(aid)
        if rec.get("credited") or basis == "window":
            converted.add(aid)

    by_arm: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for aid, (rule, arm, _, _) in touches.items():
        by_arm[rule][arm].append(aid)
    reports = []
    for rule in sorted(set(by_arm) | set(suppressed)):
        arms = []
        for name in sorted(by_arm.get(rule, {}), key=_arm_order):
            ids = by_arm[rule][name]
            n = len(ids)
            k = sum(1 for a in ids if a in converted)
            with_coupon = any(touches[a][3] for a in ids)
            cents = sum(revenue[a] for a in ids)
            days: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for a in ids:
                cell = days[_day(touches[a][2])]
                cell[0] += 1
                cell[1] += a in converted
            arms.append(Arm(name, n, Rate.of(k, n),
                            Rate.of(sum(1 for a in ids if a in redeemed), n)
                            if with_coupon and name != CONTROL else None,
                            cents, ratio(cents, n),
                            trend=[(d, c[0], c[1]) for d, c in sorted(days.items())]))
        _compare(arms)
        reports.append(RuleReport(rule, arms, dict(sorted(suppressed.get(rule, {}).items()))))
    stamps = [t[2] for t in touches.values()]
    return Report(basis, _iso(since) if since is not None else None,
                  _iso(min(stamps)) if stamps else None, _iso(max(stamps)) if stamps else None,
                  reports, unmatched)


def _compare(arms: list[Arm]) -> None:
    """Uplift of each variant against control, and against the first variant (the baseline)."""
    control = next((a for a in arms if a.name == CONTROL), None)
    variants = [a for a in arms if a.name != CONTROL]
    base = variants[0] if len(variants) > 1 else None
    for a in variants:
        if control is not None:
            a.vs_control = Uplift.of(a.converted.k, a.sent, control.converted.k, control.sent)
        if base is not None and a is not base:
            a.baseline = base.name
            a.vs_baseline = Uplift.of(a.converted.k, a.sent, base.converted.k, base.sent)


def _text(doc: Mapping[str, Any], name: str, where: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {name} must be a non-empty string, got {value!r}")
    return value


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(
        timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- text
def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _rate_text(r: Rate | None) -> str:
    if r is None or r.rate is None:
        return "-"
    return f"{_pct(r.rate)} [{_pct(r.lo)}, {_pct(r.hi)}]"


def _uplift_text(u: Uplift | None) -> str:
    if u is None:
        return "-"
    sign = "+" if u.diff >= 0 else ""
    return (f"{sign}{100 * u.diff:.1f} pts [{100 * u.lo:+.1f}, {100 * u.hi:+.1f}] "
            f"{u.verdict} (p={u.p_value:.3g})")


def _money(cents: float | None) -> str:
    return "-" if cents is None else f"{cents / 100:,.2f}"


def render_text(report: Report, out: TextIO) -> None:
    """The report as tables, one per rule."""
    out.write(f"Conversions per rule and variant ({report.basis.replace('_', ' ')}), touches "
              f"{report.first_touch or '-'} .. {report.last_touch or '-'}"
              + (f", since {report.since}" if report.since else "") + "\n")
    out.write("Rates with 95% Wilson intervals; uplift in percentage points with Newcombe's "
              "hybrid score interval.\n")
    for rule in report.rules:
        out.write(f"\n{rule.rule_id}\n")
        out.write(f"  {'arm':9s} {'sent':>7s} {'conv':>6s}  {'conversion [95% CI]':24s} "
                  f"{'redeemed':>9s} {'rev/msg':>9s}  uplift vs control / vs baseline\n")
        for a in rule.arms:
            red = _pct(a.redeemed.rate) if a.redeemed is not None else "-"
            out.write(f"  {a.name or '(all)':9s} {a.sent:7d} {a.converted.k:6d}  "
                      f"{_rate_text(a.converted):24s} {red:>9s} "
                      f"{_money(a.revenue_per_message_cents):>9s}  "
                      f"{_uplift_text(a.vs_control) if a.vs_control else ''}"
                      + (f" | vs {a.baseline}: {_uplift_text(a.vs_baseline)}"
                         if a.vs_baseline else "") + "\n")
        if rule.suppressed:
            out.write("  suppressed: " + ", ".join(f"{k} {v}" for k, v in rule.suppressed.items())
                      + "\n")
    if report.unmatched_conversions:
        out.write(f"\n{report.unmatched_conversions} conversion records name actions outside "
                  "the input (or the filters)\n")


def render_json(report: Report, out: TextIO) -> None:
    """The report as one JSON document."""
    out.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")


# ---------------------------------------------------------------- html
PALETTE = {"control": "#8a8f98", "A": "#2563eb", "B": "#ea580c", "C": "#16a34a", "D": "#9333ea"}
_EXTRA = ["#0891b2", "#be123c", "#4d7c0f", "#a16207"]


def _colour(name: str, i: int) -> str:
    return PALETTE.get(name) or _EXTRA[i % len(_EXTRA)]


def _nice_top(x: float) -> float:
    """A round axis top at or above ``x`` (a fraction), so ticks read as whole percents."""
    if x <= 0:
        return 0.1
    step = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= x:
            return m * step
    return 10 * step


def _y_grid(left: float, top: float, plot_w: float, plot_h: float, ymax: float) -> list[str]:
    """Six gridlines from 0 to ``ymax``, each labelled as a percentage on the left."""
    parts = []
    for i in range(6):
        v = ymax * i / 5
        y = top + plot_h - plot_h * i / 5
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'class="grid"/><text x="{left - 6}" y="{y + 4:.1f}" class="ax" '
                     f'text-anchor="end">{_pct(v, 1 if ymax < 0.1 else 0)}</text>')
    return parts


def bar_chart(arms: list[Arm], width: int = 430, height: int = 260) -> str:
    """Conversion rate by arm as bars with their 95% intervals as error bars (inline SVG)."""
    shown = [a for a in arms if a.converted.rate is not None]
    left, right, top, bottom = 52, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    ymax = min(1.0, _nice_top(max([a.converted.hi or 0 for a in shown] + [0.01]) * 1.08))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="conversion by variant">',
             f'<text x="{left}" y="16" class="ct">Conversion rate by arm (95% CI)</text>']
    parts += _y_grid(left, top, plot_w, plot_h, ymax)
    slot = plot_w / max(1, len(shown))
    bw = min(70.0, slot * 0.55)
    for i, a in enumerate(shown):
        assert a.converted.rate is not None and a.converted.lo is not None \
            and a.converted.hi is not None
        cx = left + slot * (i + 0.5)
        y = top + plot_h * (1 - a.converted.rate / ymax)
        ylo = top + plot_h * (1 - a.converted.lo / ymax)
        yhi = top + plot_h * (1 - a.converted.hi / ymax)
        parts.append(f'<rect x="{cx - bw / 2:.1f}" y="{y:.1f}" width="{bw:.1f}" '
                     f'height="{top + plot_h - y:.1f}" fill="{_colour(a.name, i)}" opacity="0.85">'
                     f'<title>{html.escape(a.name or "(all)")}: {_rate_text(a.converted)}</title>'
                     '</rect>')
        parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{ylo:.1f}" y2="{yhi:.1f}" class="eb"/>'
                     f'<line x1="{cx - 9:.1f}" x2="{cx + 9:.1f}" y1="{ylo:.1f}" y2="{ylo:.1f}" '
                     f'class="eb"/><line x1="{cx - 9:.1f}" x2="{cx + 9:.1f}" y1="{yhi:.1f}" '
                     f'y2="{yhi:.1f}" class="eb"/>')
        # The value sits inside the bar's top when it fits, clear of the error bar's caps.
        inside = top + plot_h - y > 34
        # Inside, a halo in the bar's colour keeps the error bar from crossing the digits.
        halo = (f' stroke="{_colour(a.name, i)}" stroke-width="4" paint-order="stroke"'
                if inside else "")
        parts.append(f'<text x="{cx:.1f}" y="{(y + 26 if inside else yhi - 6):.1f}" '
                     f'class="{"vin" if inside else "val"}" text-anchor="middle"{halo}>'
                     f'{_pct(a.converted.rate)}</text>')
        parts.append(f'<text x="{cx:.1f}" y="{top + plot_h + 16}" class="lab" text-anchor="middle">'
                     f'{html.escape(a.name or "(all)")}</text><text x="{cx:.1f}" '
                     f'y="{top + plot_h + 31}" class="ax" text-anchor="middle">n={a.sent:,}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" class="axis"/>'
                 f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}" class="axis"/></svg>')
    return "".join(parts)


def trend_chart(arms: list[Arm], width: int = 560, height: int = 260) -> str:
    """Conversion rate by the touch's day, one line per arm (inline SVG)."""
    days = sorted({d for a in arms for d, _, _ in a.trend})
    left, right, top, bottom = 52, 90, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    rates = [c / n for a in arms for _, n, c in a.trend if n]
    ymax = min(1.0, _nice_top(max(rates + [0.01]) * 1.08))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="daily conversion trend">',
             f'<text x="{left}" y="16" class="ct">Daily conversion rate (by day of the message)'
             '</text>']
    parts += _y_grid(left, top, plot_w, plot_h, ymax)

    def x_of(day: str) -> float:
        i = days.index(day)
        return left + (plot_w * i / (len(days) - 1) if len(days) > 1 else plot_w / 2)

    step = max(1, math.ceil(len(days) / 7))
    for i, d in enumerate(days):
        last = i == len(days) - 1
        if (i % step == 0 and not (i + step > len(days) - 1 and not last and i)) or last:
            parts.append(f'<text x="{x_of(d):.1f}" y="{top + plot_h + 16}" class="ax" '
                         f'text-anchor="middle">{d[5:]}</text>')
    for i, a in enumerate(arms):
        pts = [(x_of(d), top + plot_h * (1 - (c / n) / ymax), d, n, c) for d, n, c in a.trend if n]
        if not pts:
            continue
        colour = _colour(a.name, i)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y, *_ in pts) + '"/>')
        for x, y, d, n, c in pts:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>'
                         f'{html.escape(a.name or "(all)")} {d}: {c}/{n}</title></circle>')
        ly = top + 14 + 18 * i
        parts.append(f'<line x1="{left + plot_w + 12}" x2="{left + plot_w + 30}" y1="{ly - 4}" '
                     f'y2="{ly - 4}" stroke="{colour}" stroke-width="3"/><text '
                     f'x="{left + plot_w + 35}" y="{ly}" class="lab">'
                     f'{html.escape(a.name or "(all)")}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" class="ax" '
                 'text-anchor="middle">day (UTC)</text>'
                 f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" class="axis"/>'
                 f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}" class="axis"/></svg>')
    return "".join(parts)


_CSS = """
body{font:14px/1.45 "DejaVu Sans",Arial,sans-serif;color:#1f2328;margin:24px;background:#f6f7f9;
max-width:1100px}
h1{font-size:22px;margin:0 0 4px} .sub{color:#57606a;margin:0 0 18px}
.rule{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 18px;margin:0 0 18px}
.rule h2{font-size:18px;margin:0 0 10px}
table{border-collapse:collapse;margin:0 0 12px;width:100%}
th,td{padding:5px 8px;border-bottom:1px solid #eaeef2;text-align:right;white-space:nowrap}
td.u{white-space:normal;min-width:150px} td.u small{display:block;color:#57606a}
th{background:#f6f8fa;font-weight:600;white-space:normal} td:first-child,th:first-child{text-align:left}
.better{color:#1a7f37;font-weight:600} .worse{color:#cf222e;font-weight:600} .unclear{color:#57606a}
.charts{display:flex;flex-wrap:wrap;gap:18px} .supp{color:#57606a;margin:4px 0 10px}
svg .grid{stroke:#eaeef2} svg .axis{stroke:#57606a} svg .eb{stroke:#1f2328;stroke-width:1.6}
svg text{font-family:"DejaVu Sans",Arial,sans-serif} svg .ax{font-size:11px;fill:#57606a}
svg .lab{font-size:12px;fill:#1f2328} svg .val{font-size:11px;fill:#1f2328}
svg .vin{font-size:12px;font-weight:600;fill:#fff}
svg .ct{font-size:13px;font-weight:600;fill:#1f2328}
.notes{color:#57606a;font-size:12.5px;max-width:980px}
"""


def _uplift_html(u: Uplift | None) -> str:
    if u is None:
        return "-"
    return (f'<span class="{u.verdict}">{100 * u.diff:+.1f} pts {u.verdict}</span>'
            f'<small>[{100 * u.lo:+.1f}, {100 * u.hi:+.1f}] p={u.p_value:.2g}</small>')


def render_html(report: Report, out: TextIO) -> None:
    """One self-contained page: tables and inline SVG charts, no script, nothing fetched."""
    esc = html.escape
    w = out.write
    w('<!doctype html><html lang="en"><head><meta charset="utf-8">'
      '<title>engage: conversions and uplift</title>'
      f"<style>{_CSS}</style></head><body>")
    w("<h1>Conversions and uplift per rule</h1>")
    period = f"{report.first_touch or '-'} to {report.last_touch or '-'}"
    w(f'<p class="sub">Messages from {esc(period)}'
      + (f", since {esc(report.since)}" if report.since else "")
      + f" &middot; attribution: {esc(report.basis.replace('_', ' '))}</p>")
    if not report.rules:
        w("<p>No actions or decisions in the input.</p>")
    for rule in report.rules:
        w(f'<section class="rule"><h2>{esc(rule.rule_id)}</h2>')
        w("<table><tr><th>arm</th><th>sent</th><th>converted</th><th>conversion [95% CI]</th>"
          "<th>uplift vs control</th><th>vs baseline</th><th>redeemed</th>"
          "<th>revenue / message</th></tr>")
        for a in rule.arms:
            red = _pct(a.redeemed.rate) if a.redeemed is not None else "-"
            base = (f"<small>vs {esc(a.baseline)}</small>{_uplift_html(a.vs_baseline)}"
                    if a.vs_baseline is not None else "-")
            w(f"<tr><td>{esc(a.name or '(all)')}</td><td>{a.sent:,}</td>"
              f"<td>{a.converted.k:,}</td><td>{_rate_text(a.converted)}</td>"
              f'<td class="u">{_uplift_html(a.vs_control)}</td><td class="u">{base}</td>'
              f"<td>{red}</td>"
              f"<td>{_money(a.revenue_per_message_cents)}</td></tr>")
        w("</table>")
        supp = ", ".join(f"{esc(k.replace('_', ' '))} {v:,}" for k, v in rule.suppressed.items())
        w(f'<p class="supp">Suppressed: {supp or "none"}</p>')
        if rule.arms:
            w(f'<div class="charts">{bar_chart(rule.arms)}{trend_chart(rule.arms)}</div>')
        w("</section>")
    w('<p class="notes">Conversion: an order within the rule\'s attribution window after the '
      "message (last touch: credited to the most recent message, a coupon used in the order "
      "wins), not refunded in full. Control: customers held out, never sent. Intervals are 95% "
      "(Wilson for rates, Newcombe's hybrid score for uplift); a verdict is <b>better</b> or "
      "<b>worse</b> only when the interval excludes 0. Revenue per message is credited revenue "
      "net of refunds over messages sent.</p>")
    if report.unmatched_conversions:
        w(f'<p class="notes">{report.unmatched_conversions:,} conversion records name actions '
          "outside the input or the filters.</p>")
    w("</body></html>\n")


RENDERERS = {"text": render_text, "json": render_json, "html": render_html}


# ---------------------------------------------------------------- screenshot
def chromium_binary() -> str | None:
    """The headless browser that renders the HTML report, if one is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render_png(html_path: str, png_path: str, width: int = 1100, height: int = 1400,
               timeout_s: float = 60.0) -> None:
    """Screenshot ``html_path`` with headless Chromium; RuntimeError saying why when it cannot.

    Debian's ``chromium`` (``apt-get install chromium``): the page needs no
    network, so none is given.
    """
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("no chromium on PATH (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="engage-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={os.path.abspath(png_path)}",
               Path(os.path.abspath(html_path)).as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    if proc.returncode != 0 or not Path(png_path).is_file():
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr.strip()[-400:]}")


# ---------------------------------------------------------------- command
def parse_since(text: str | None, touches_ms: Iterable[int]) -> int | None:
    """``--since``: an ISO date/time, or a duration (``30d``) back from the newest touch."""
    if not text:
        return None
    from engage.state.windows import parse_duration  # noqa: PLC0415

    try:
        span = parse_duration(text)
    except ValueError:
        return parse_time(text if "T" in text else text + "T00:00:00Z", "--since")
    latest = max(touches_ms, default=0)
    return latest - span


def read_topics(bootstrap: str, timeout: float = 120.0,
                kafka_config: dict[str, str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(topic/partition@offset, doc)`` of every message on the engine's actions, audit and
    conversions topics (read from the start; a topic not created yet reads as empty).
    ``kafka_config``: the client settings (SASL, TLS) of ``ENGAGE_KAFKA_CONFIG``."""
    from engage.connectors.kafka import (  # noqa: PLC0415 - files need no Kafka client
        ACTIONS_TOPIC, AUDIT_TOPIC, CONVERSIONS_TOPIC, read_topic)

    docs: list[tuple[str, dict[str, Any]]] = []
    for topic in (ACTIONS_TOPIC, AUDIT_TOPIC, CONVERSIONS_TOPIC):
        try:
            messages = read_topic(bootstrap, topic, timeout, kafka_config)
        except KeyError:
            continue
        for m in messages:
            where = f"{topic}/{m.partition()}@{m.offset()}"
            try:
                doc = orjson.loads(m.value() or b"")
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON ({exc})") from None
            if not isinstance(doc, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(doc).__name__}")
            docs.append((where, doc))
    return docs


def main(paths: list[str], since: str | None, rules: str | None, fmt: str, out: TextIO,
         basis: str = "last_touch", docs: list[tuple[str, dict[str, Any]]] | None = None) -> int:
    """The command: read the files (or take ``docs`` read elsewhere), build the report,
    write it in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    docs = list(docs or [])
    for p in paths:
        if not Path(p).is_file():
            raise ValueError(f"{p}: no such file")
        docs.extend(read_jsonl(p))
    actions, audit, conversions = sort_docs(docs)
    stamps = [touch_time(d, w) for w, d in actions]
    stamps += [touch_time(d, w) for w, d in audit if d.get("reason") == CONTROL]
    wanted = [r.strip() for r in rules.split(",") if r.strip()] if rules else None
    report = build_report(actions, audit, conversions, parse_since(since, stamps), wanted, basis)
    RENDERERS[fmt](report, out)
    return 0
