"""Two processes of two workers each give the same customer state, action ids and
conversions as one worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engage.config import Settings
from engage.connectors.devstack import DevStack
from engage.attribution.ledger import newest
from engage.connectors.kafka import ACTIONS_TOPIC, CONVERSIONS_TOPIC, EVENTS_TOPIC, produce_all
from engage.simulator.storefront import Storefront
from engage.connectors.redis_store import read_document

from stack_helpers import redis_client, state_snapshot, topic_docs


CAPPED_RULES = str(Path(__file__).parent.parent / "rules" / "capped.yaml")


def _run(stack: DevStack, *flags: str, recovery: str = "",
         rules: str | None = None) -> tuple[dict, list[str], dict]:
    where = ["--recovery-dir", recovery] if recovery else ["--no-recovery"]
    env = {**stack.env(), **({"ENGAGE_RULES": rules} if rules else {})}
    out = subprocess.run(
        [sys.executable, "-m", "engage.cli", "run", "--stop-at-end", *where,
         "--metrics-port", "0", *flags],
        env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return (state_snapshot(redis_client(stack)),
            sorted(a["action_id"] for a in topic_docs(stack, ACTIONS_TOPIC)),
            dict(newest(topic_docs(stack, CONVERSIONS_TOPIC))))


def test_two_processes_of_two_workers_reach_the_same_state_and_actions_as_one_worker() -> None:
    records = list(Storefront(seed=11, customers=400, mean_gap_ms=8000).events(12000))
    results = []
    for flags in (("--workers", "1"), ("--workers", "2", "--processes", "2")):
        with DevStack(event_partitions=4) as stack:
            produce_all(stack.bootstrap, EVENTS_TOPIC, records)
            # Caps, a control group and a post-purchase rule whose messages orders follow.
            results.append(_run(stack, *flags, rules=CAPPED_RULES))
    (one_state, one_actions, one_conv), (cluster_state, cluster_actions, cluster_conv) = results
    assert len(one_state) > 400 and one_actions  # customers, devices and reminders exist
    assert cluster_state == one_state
    assert cluster_actions == one_actions
    assert one_conv and cluster_conv == one_conv   # attribution is keyed like the customers


def test_a_cluster_with_recovery_resumes_where_it_stopped(tmp_path: Path) -> None:
    # The supervisor creates the recovery partitions and picks the lineage once;
    # a second run of the cluster resumes from the snapshots of the first.
    records = list(Storefront(seed=3, customers=150, mean_gap_ms=8000).events(4000))
    with DevStack(event_partitions=4) as stack:
        produce_all(stack.bootstrap, EVENTS_TOPIC, records)
        expected = _run(stack, "--workers", "1")[:2]
    with DevStack(event_partitions=4) as stack:
        for half in (records[:2000], records[2000:]):
            produce_all(stack.bootstrap, EVENTS_TOPIC, half)
            state, actions, _ = _run(stack, "--workers", "1", "--processes", "2",
                                     recovery=str(tmp_path / "recovery"))
        client = redis_client(stack)
        lineages = {read_document(client, k).get("lin") for k in client.scan_iter("engage:c:*")}
    # Every document of the deployment carries one lineage, whichever process wrote it.
    assert len(lineages) == 1 and None not in lineages
    assert (state, actions) == expected


@pytest.mark.parametrize("flags, message", [
    ({"addresses": "a:1;b:2"}, "process_id: required"),
    ({"addresses": "a:1;b:2", "process_id": 2}, "not an index"),
    ({"addresses": "a:1;b:2", "process_id": 0, "processes": 3}, "3 processes but 2 addresses"),
])
def test_cluster_settings_are_checked(flags: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.load(flags, {})


def test_addresses_size_the_cluster() -> None:
    settings = Settings.load({"addresses": "a:1;b:2;c:3", "process_id": 1}, {})
    assert settings.processes == 3 and settings.addresses == ("a:1", "b:2", "c:3")
