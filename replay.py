"""``engage replay``: the engine over a file of events, in event time, sending nothing.

The same dataflow as production (parse, identity, state, rules, quiet hours,
the contact ledger's caps and conflict groups), with the file as its input,
an in-memory ledger, and event time as the decision clock. Marketing uses
it to backtest a rule file on last month's events before it goes live:
what would have been sent, what would have been suppressed and why, per
rule, and which orders each rule and variant would have been credited with
(the attribution step runs too: ``--json`` output feeds ``engage report``).
Nothing reaches Kafka or Redis.
"""

from __future__ import annotations

import os
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from bytewax.testing import run_main

from engage.config import Settings
from engage.connectors.kafka import CONVERSIONS_TOPIC, PROFILE_TOPIC
from engage.connectors.memory import ListSink, ListSource
from engage.flows.engagement import build_flow
from engage.operators.contact import ContactPolicy
from engage.operators.records import Emit
from engage.rules.book import RuleBook, rule_paths
from engage.state.contact import MemoryLedger

#: Partitions the file's events are spread over, by key, like the topic's.
PARTITIONS = 3


@dataclass
class ReplayResult:
    """What a replay decided."""

    actions: list[dict[str, Any]]
    suppressed: list[dict[str, Any]]
    dead_letters: list[tuple[str, str]]   # (reason, detail)
    events: int
    profile_changes: list[dict[str, Any]] = field(default_factory=list)
    #: Conversion records of the attribution step, as ``engage.conversions`` would carry them.
    conversions: list[dict[str, Any]] = field(default_factory=list)

    def attribution(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per rule and arm (variant, ``control``, or ``-``): touches, credited conversions,
        redemptions and net revenue in cents, as ``engage report`` counts them."""
        from engage.report import build_report  # noqa: PLC0415 - only for this summary

        report = build_report([("replay", d) for d in self.actions],
                              [("replay", d) for d in self.suppressed],
                              [("replay", r) for r in self.conversions])
        return {r.rule_id: {a.name or "-": {"touches": a.sent, "converted": a.converted.k,
                                            "redeemed": a.redeemed.k if a.redeemed else 0,
                                            "net_cents": a.revenue_cents}
                            for a in r.arms}
                for r in report.rules if r.arms}

    def summary(self) -> dict[str, dict[str, int]]:
        """Per rule: fired (sent), then a count per suppression reason, and deferred."""
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for doc in self.actions:
            out[doc["rule_id"]]["fired"] += 1
        for doc in self.suppressed:
            out[doc["rule_id"]][doc["reason"]] += 1
        for doc in self.actions + self.suppressed:
            if "deferred" in doc.get("explain", {}):
                out[doc["rule_id"]]["deferred"] += 1
        return {rule: dict(sorted(c.items())) for rule, c in sorted(out.items())}


def read_events(path: str) -> list[tuple[int, int, bytes, bytes]]:
    """Raw records from a JSON-lines file (blank lines skipped), keyed like a storefront's."""
    records = []
    with open(path, "rb") as fh:
        for n, line in enumerate(fh):
            line = line.strip()
            if not line:
                continue
            key = b""
            try:
                doc = orjson.loads(line)
                if isinstance(doc, dict):
                    key = str(doc.get("user_id") or doc.get("anonymous_id") or "").encode()
            except orjson.JSONDecodeError:
                pass   # the engine dead-letters it, with its reason, like any bad record
            part = zlib.crc32(key) % PARTITIONS
            records.append((part, n, key, line))
    return records


def replay(events_path: str, rules: list[str] | str | None, settings: Settings | None = None
           ) -> ReplayResult:
    """Run the engine over ``events_path`` with the rules under ``rules``."""
    # The deployment's settings (lateness, windows, tiers, models...) from the
    # environment, so a backtest decides as the live engine would; no recovery.
    settings = settings or Settings.load({"recovery_dir": "", "metrics_port": 0})
    paths = rules if isinstance(rules, list) else rule_paths(rules or os.environ.get("ENGAGE_RULES"))
    book = RuleBook.load(paths, settings.state_config())
    records = read_events(events_path)
    # Events from the past are the point; only stamps past the file's own
    # end plus the allowed skew are "in the future".
    latest = _latest_ts(records)
    now = max(time.time(), latest / 1000)
    kafka = ListSink()
    flow = build_flow(settings, ListSource(records, settings.batch_size), ListSink(keep=False),
                      kafka, lineage="replay", live=False, finish_on_eof=True,
                      now=lambda: now, rules=book, contact=ContactPolicy(MemoryLedger.empty()))
    run_main(flow)
    actions, suppressed, dead, changes, conversions = [], [], [], [], []
    for emit in kafka.items or []:
        assert isinstance(emit, Emit)
        if emit.topic == "engage.dlq":
            headers = dict(emit.headers)
            dead.append((headers["engage.reason"].decode(), headers["engage.detail"].decode()))
        elif emit.topic == "engage.actions":
            actions.append(orjson.loads(emit.value or b"{}"))
        elif emit.topic == PROFILE_TOPIC:
            changes.append(orjson.loads(emit.value or b"{}"))
        elif emit.topic == CONVERSIONS_TOPIC:
            conversions.append(orjson.loads(emit.value or b"{}"))
        else:
            suppressed.append(orjson.loads(emit.value or b"{}"))
    return ReplayResult(actions, suppressed, dead, len(records), changes, conversions)


def _latest_ts(records: list[tuple[int, int, bytes, bytes]]) -> int:
    latest = 0
    for _, _, _, value in records:
        try:
            ts = orjson.loads(value).get("ts")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(ts, int) and not isinstance(ts, bool):
            latest = max(latest, ts)
    return latest


def print_result(result: ReplayResult, out: TextIO, as_json: bool = False) -> None:
    """Actions, suppressed decisions and the per-rule summary, as text or JSON lines."""
    if as_json:
        for doc in result.actions:
            out.write(orjson.dumps({"sent": True, **doc}).decode() + "\n")
        for doc in result.suppressed:
            out.write(orjson.dumps({"sent": False, **doc}).decode() + "\n")
        # Conversion records as engage.conversions carries them: `engage report`
        # reads this output as it is.
        for rec in result.conversions:
            out.write(orjson.dumps(rec).decode() + "\n")
        out.write(orjson.dumps({"summary": result.summary(), "events": result.events,
                                "dead_letters": len(result.dead_letters),
                                "attribution": result.attribution()}).decode() + "\n")
        return
    decided = sorted([(d["trigger_ts"], True, d) for d in result.actions]
                     + [(d["trigger_ts"], False, d) for d in result.suppressed],
                     key=lambda x: (x[0], x[2]["rule_id"], x[2]["user_id"]))
    for ts, sent, d in decided:
        verdict = "SEND    " if sent else f"{d['reason'].upper():8s}"
        variant = f" [{d['variant']}]" if d.get("variant") else ""
        out.write(f"{ts[:16]}  {verdict} {d['rule_id'] + variant:32s} {d['user_id']:12s} "
                  f"{d.get('channel') or '-':7s} {d['action_id']}\n")
    out.write(f"\n{result.events} events, {len(result.dead_letters)} dead letters, "
              f"{len(result.actions)} actions, {len(result.suppressed)} suppressed\n")
    out.write(f"{'rule':32s} {'fired':>6s}  suppressed / deferred\n")
    for rule, counts in result.summary().items():
        rest = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "fired")
        out.write(f"{rule:32s} {counts.get('fired', 0):6d}  {rest}\n")
    attribution = result.attribution()
    if attribution:
        out.write(f"\n{'rule [arm]':32s} {'touches':>8s} {'converted':>10s} {'redeemed':>9s} "
                  f"{'net revenue':>12s}   (last touch; engage report for intervals)\n")
        for rule, arms in attribution.items():
            for arm, c in arms.items():
                out.write(f"{rule + ' [' + arm + ']':32s} {c.get('touches', 0):8d} "
                          f"{c.get('converted', 0):10d} {c.get('redeemed', 0):9d} "
                          f"{c.get('net_cents', 0) / 100:12.2f}\n")


def main(events: str, rules: str | None, as_json: bool, out: TextIO) -> int:
    """The command: 0 when the replay ran (whatever it decided)."""
    if not Path(events).is_file():
        raise ValueError(f"{events}: no such events file")
    print_result(replay(events, rules), out, as_json)
    return 0
