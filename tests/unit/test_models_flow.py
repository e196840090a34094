"""The models through the engine's own dataflow: what they learn does not depend on how
the events were spread over partitions or cut into batches.

Each customer shard learns its replica in event-time order, so the same
events give the same models, the same scores and the same pending examples
whether one partition carried everything in one batch or four skewed
partitions carried it in batches of seven.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from bytewax.testing import run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from engage.config import Settings
from engage.connectors.memory import ListSink, ListSource
from engage.flows.engagement import build_flow
from engage.operators.records import StateWrites
from engage.simulator.churners import as_events, population

EVENTS = list(as_events(population(150, 400, seed=5)))


def run(partitions: int, batch: int, salt: int) -> dict[str, Any]:
    """Every key's final value (customer documents and model summaries) after one run."""
    cfg = Settings.load({"recovery_dir": "", "metrics_port": 0, "model_warmup": 0,
                         "customer_shards": 4, "batch_size": batch}, {})
    offsets = [0] * partitions
    records = []
    for e in EVENTS:
        key = (e["user_id"] or e["anonymous_id"]).encode()
        # Skewed: a salted hash picks each customer's partition (a customer stays on one).
        p = zlib.crc32(key + str(salt).encode()) % partitions
        records.append((p, offsets[p], key, orjson.dumps(e)))
        offsets[p] += 1
    state = ListSink()
    run_main(build_flow(cfg, ListSource(records, batch), state, ListSink(keep=False),
                        lineage="test", live=False, finish_on_eof=True))
    final: dict[str, Any] = {}
    for w in state.items or []:
        assert isinstance(w, StateWrites)
        for k, v in w.writes.items():
            final[k] = None if v is None else orjson.loads(v)
    return {k: v for k, v in final.items() if v is not None}


REFERENCE = run(1, 8000, 0)


def test_the_reference_run_learnt_and_scored() -> None:
    models = [v for k, v in REFERENCE.items() if k.startswith("engage:model:")]
    assert models and sum(m["churn_risk"]["learned"] for m in models) > 300
    scored = [v for k, v in REFERENCE.items()
              if k.startswith("engage:c:") and "scores" in v.get("derived", {})]
    assert len(scored) >= 100


@settings(max_examples=6, deadline=None)
@given(partitions=st.integers(2, 4), batch=st.sampled_from([7, 60, 500]),
       salt=st.integers(0, 10_000))
def test_models_learn_the_same_whatever_the_partitions_and_batches(partitions: int, batch: int,
                                                                    salt: int) -> None:
    got = run(partitions, batch, salt)
    assert got.keys() == REFERENCE.keys()
    for key, value in REFERENCE.items():
        mine = got[key]
        if key.startswith("engage:c:"):
            value = {k: v for k, v in value.items() if k != "lin"}
            mine = {k: v for k, v in mine.items() if k != "lin"}
        assert mine == value, key
