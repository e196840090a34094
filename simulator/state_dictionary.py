"""Trains the state codec's zstd dictionary on documents of the simulated storefront.

``python -m engage.simulator.state_dictionary OUT.zdict [--id N]`` runs the
engine's dataflow (in memory, the shipped catalog, models on) over simulated
traffic of several shops (seeds other than the benchmark's 42, so that the
benchmark measures documents the dictionary has not seen), takes the final
document of every customer and device, and trains a dictionary on them.

The shipped dictionary (``state/state-v1.zdict``) came from this with the
defaults; a new one must get a new ``--id`` and be added to
``engage.state.codec._DICTIONARIES`` beside the old ones, never replace them.
"""

from __future__ import annotations

import argparse
import random
import time

from bytewax.testing import run_main

from engage.config import Settings
from engage.connectors.memory import ListSink, ListSource
from engage.flows.engagement import build_flow
from engage.rules.book import RuleBook, rule_paths
from engage.rules.loader import CATALOG_DIR
from engage.simulator.storefront import Storefront
from engage.state.codec import DICTIONARY_ID, train
from engage.state.keys import STATE_PATTERN


def documents(seed: int, events: int, customers: int) -> list[bytes]:
    """The final state document of every customer and device after ``events`` of one shop."""
    settings = Settings.load({"recovery_dir": "", "metrics_port": 0, "models": True}, {})
    shop = Storefront(seed=seed, customers=customers, mean_gap_ms=300, sessions=1000,
                      start_ms=int(time.time() * 1000) - events * 300 - 86_400_000)
    records = [(0, i, key, value) for i, (key, value) in enumerate(shop.events(events))]
    book = RuleBook.load(rule_paths(str(CATALOG_DIR)), settings.state_config())
    state = ListSink(keep=True)
    run_main(build_flow(settings, ListSource(records, settings.batch_size), state,
                        ListSink(keep=False), lineage="train", rules=book))
    prefix = STATE_PATTERN.rstrip("*")
    final: dict[str, bytes | None] = {}
    for writes in state.items:
        final.update((k, v) for k, v in writes.writes.items() if k.startswith(prefix))
    return [v for v in final.values() if v is not None]


def main() -> None:
    """Command-line entry: train and write the dictionary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("--id", type=int, default=DICTIONARY_ID)
    parser.add_argument("--size", type=int, default=16_384)
    parser.add_argument("--samples", type=int, default=20_000)
    args = parser.parse_args()
    docs: list[bytes] = []
    for seed in (7, 11, 13):
        docs += documents(seed, 100_000, 20_000)
    random.Random(0).shuffle(docs)
    data = train(docs[:args.samples], args.size, args.id)
    with open(args.out, "wb") as fh:
        fh.write(data)
    print(f"trained dictionary {args.id} ({len(data):,} bytes) on "
          f"{min(len(docs), args.samples):,} of {len(docs):,} documents: {args.out}")


if __name__ == "__main__":
    main()
