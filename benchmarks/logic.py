"""The engine's logic alone: the production dataflow between in-memory connectors.

``python -m engage.benchmarks.logic`` runs the same steps as ``engage bench``'s
engine row (parse, event clock, identity, windows, carts, reminders, the
Redis documents and Kafka messages each batch produces) but reads from a list
and hands its outputs to sinks that only count them. The difference between
this and the engine row is what Kafka and Redis cost; this number is the
ceiling any I/O work can reach, and the one to watch when changing the logic.
"""

from __future__ import annotations

import argparse
import time
import zlib
from typing import Any

from bytewax.testing import run_main

from engage.config import Settings
from engage.connectors.memory import ListSink, ListSource
from engage.flows.engagement import build_flow
from engage.rules.book import RuleBook, rule_paths
from engage.rules.loader import CATALOG_DIR
from engage.runtime import tune_gc
from engage.simulator.storefront import Storefront


#: Where the workload's event time starts (2026-01-01 UTC): fixed, so that every
#: run buckets the same events into the same minutes, hours and days and two
#: runs compare the code, not the clock they started at.
START_MS = 1_767_225_600_000


def records(events: int, customers: int, partitions: int = 3) -> list[Any]:
    """The benchmark's storefront workload as raw records, spread over partitions by key."""
    shop = Storefront(seed=42, customers=customers, mean_gap_ms=300, sessions=1000,
                      start_ms=START_MS)
    out = []
    offsets = [0] * partitions
    for key, value in shop.events(events):
        p = zlib.crc32(key) % partitions
        out.append((p, offsets[p], key, value))
        offsets[p] += 1
    return out


def run(events: int, customers: int, repeat: int, rules: str | None = None) -> float:
    """Best events/s over ``repeat`` runs of the dataflow on the same records.

    ``rules``: rule files to run (None: no rules at all, the state alone).
    """
    settings = Settings.load({"recovery_dir": "", "metrics_port": 0})
    data = records(events, customers)
    book = RuleBook.load(rule_paths(rules), settings.state_config()) if rules else None
    best = 0.0
    for _ in range(repeat):
        flow = build_flow(settings, ListSource(data, settings.batch_size), ListSink(keep=False),
                          ListSink(keep=False), lineage="bench", rules=book)
        tune_gc()
        started = time.perf_counter()
        run_main(flow)
        best = max(best, events / (time.perf_counter() - started))
    return best


def main() -> None:
    """Command-line entry: print the best rate."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rules", help="rule files (',' separated); 'catalog' for the shipped "
                                        "one; default: no rules")
    args = parser.parse_args()
    rules = str(CATALOG_DIR) if args.rules == "catalog" else args.rules
    rate = run(args.events, args.customers, args.repeat, rules)
    print(f"engine logic without I/O: {rate:,.0f} events/s "
          f"({args.events:,} events, {args.customers:,} customers, rules: {rules or 'none'}, "
          f"best of {args.repeat})")


if __name__ == "__main__":
    main()
