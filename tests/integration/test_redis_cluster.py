"""The engine against a real Redis Cluster (three primaries started here) gives what one node gives.

The same events, with caps, quiet hours and a conflict group in force
(``tests/rules/capped.yaml``), go once through the engine against a single
redis-server and once against the cluster: every state document, device
link, contact ledger, membership set and action id is the same, and the
memberships index holds the same lists (one hash on a node, one key per
customer on a cluster). Then ``engage profile`` and ``engage forget`` run
against the cluster, and the engine resumes after the erasure.
"""

from __future__ import annotations

import heapq
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engage.connectors.devstack import DevStack
from engage.connectors.kafka import ACTIONS_TOPIC, AUDIT_TOPIC, EVENTS_TOPIC, produce_all
from engage.connectors.redis_ledger import RedisLedger
from engage.connectors.redis_store import (RedisStateSink, connect, has_state, make_loader,
                                           read_clock, read_document)
from engage.operators.records import StateWrites
from engage.simulator.storefront import Storefront
from engage.state.contact import CapCheck, LedgerRequest, MemoryLedger
from engage.state.keys import ERASURES_KEY, MEMBERS_INDEX, memberships_key, state_key

from helpers import DAY, HOUR, MIN, T0, add, login, view
from redis_cluster import LocalRedisCluster, NoClusterSupport
from stack_helpers import produce, run_engine, state_snapshot, take_over_and_continue, topic_docs

pytestmark = pytest.mark.integration
CAPPED = str(Path(__file__).parent.parent / "rules" / "capped.yaml")
WEEK = 7 * DAY


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRedisCluster]:
    """Three primaries, no replicas, on free loopback ports; removed after the module."""
    try:
        with LocalRedisCluster(primaries=3) as c:
            yield c
    except NoClusterSupport as exc:
        pytest.skip(f"no Redis Cluster on this machine: {exc}")


def cluster_snapshot(c: LocalRedisCluster) -> dict[str, Any]:
    """Every engine key of the cluster (each primary holds some) and its decoded value."""
    out: dict[str, Any] = {}
    for node in c.nodes():
        mine = state_snapshot(node)
        assert not set(mine) & set(out)   # a key lives on exactly one primary
        out.update(mine)
    return out


def index_as_keys(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A single node's snapshot with its memberships hash written as a cluster holds it."""
    out = dict(snapshot)
    for customer, now_in in out.pop(MEMBERS_INDEX, {}).items():
        out[memberships_key(customer.decode())] = now_in
    return out


def engage(*args: str, redis_url: str, stack: DevStack, timeout: int = 240) -> str:
    """``engage ARGS`` as deployed (a subprocess) against the stack's Kafka and ``redis_url``."""
    env = {**os.environ, **stack.env(), "ENGAGE_REDIS_URL": redis_url, "ENGAGE_RULES": CAPPED,
           "ENGAGE_METRICS_PORT": "0"}
    out = subprocess.run([sys.executable, "-m", "engage.cli", *args], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


class Runs:
    """What the two runs of the same events left behind."""

    def __init__(self, stack: DevStack, cluster: LocalRedisCluster, recovery: Path,
                 last_ts: int) -> None:
        self.stack = stack
        self.cluster = cluster
        self.recovery = recovery
        self.last_ts = last_ts
        self.single: dict[str, Any] = {}
        self.on_cluster: dict[str, Any] = {}
        self.single_actions: list[str] = []
        self.cluster_actions: list[str] = []
        #: (action id, reason) of each refused decision: the contact ledger's verdicts among them.
        self.single_refused: list[tuple[str, str]] = []
        self.cluster_refused: list[tuple[str, str]] = []


def refused(stack: DevStack) -> list[tuple[str, str]]:
    """Every audit record's action id and reason, in topic order."""
    return [(a["action_id"], a["reason"]) for a in topic_docs(stack, AUDIT_TOPIC) if "reason" in a]


def records_start(records: list[tuple[bytes, bytes]]) -> int:
    """The time of the first well-formed record."""
    return next(t for t in (_ts(v) for _, v in records) if t)


def _ts(value: bytes) -> int:
    """An event's time; 0 for the malformed records the storefront sends on purpose."""
    try:
        return int(orjson.loads(value)["ts"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return 0


@pytest.fixture(scope="module")
def runs(cluster: LocalRedisCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """One stack (broker and a single redis-server), the same events run against both Redis."""
    # A week of a small store: customers come back often enough for the caps to refuse some.
    records = list(Storefront(seed=5, customers=60, mean_gap_ms=150_000).events(5000))
    # And one customer whose cart reminder comes 50 minutes after a sofa offer of the same
    # conflict group (in the morning: quiet hours would move it), for the conflict check.
    day = records_start(records) // DAY * DAY + DAY
    crafted = [add(day + 10 * HOUR, user="c-conflict", price=900.0),
               *(view(day + 33 * HOUR + i * 5 * MIN, user="c-conflict") for i in range(3))]
    records = list(heapq.merge(records, ((b"c-conflict", orjson.dumps(d)) for d in crafted),
                               key=lambda r: _ts(r[1])))
    last_ts = max(_ts(value) for _, value in records)
    recovery = tmp_path_factory.mktemp("cluster-run") / "recovery"
    with DevStack(event_partitions=3) as stack:
        produce_all(stack.bootstrap, EVENTS_TOPIC, records)
        cluster.flush()
        result = Runs(stack, cluster, recovery, last_ts)
        engage("run", "--stop-at-end", "--no-recovery", redis_url=stack.redis_url, stack=stack)
        result.single = index_as_keys(state_snapshot(redis.Redis.from_url(stack.redis_url)))
        result.single_actions = [a["action_id"] for a in topic_docs(stack, ACTIONS_TOPIC)]
        result.single_refused = refused(stack)
        # The same topic from the beginning, into the cluster, with recovery (the
        # erasure test resumes from it): its actions follow the first run's.
        engage("run", "--stop-at-end", "--recovery-dir", str(recovery), redis_url=cluster.url,
               stack=stack)
        result.on_cluster = cluster_snapshot(cluster)
        result.cluster_actions = [a["action_id"] for a in topic_docs(stack, ACTIONS_TOPIC)][
            len(result.single_actions):]
        result.cluster_refused = refused(stack)[len(result.single_refused):]
        yield result


def test_the_cluster_holds_what_a_single_node_holds_and_the_same_actions_go_out(runs: Runs) -> None:
    single, on_cluster = runs.single, runs.on_cluster
    kinds = {name.split(":")[1] for name in single}
    # Customers, devices, contact ledgers, membership sets and index: all of it was exercised.
    assert {"c", "link", "sent", "sentmeta", "members", "memberships"} <= kinds
    assert sum(name.startswith("engage:sent:") for name in single) > 10
    assert set(on_cluster) == set(single)
    for name in single:
        assert on_cluster[name] == single[name], name
    assert runs.single_actions and sorted(runs.cluster_actions) == sorted(runs.single_actions)
    # The caps and the conflict group refused some: the same ones, for the same reasons.
    reasons = {reason for _, reason in runs.single_refused}
    assert {"cap", "conflict"} <= reasons, reasons
    assert sorted(runs.cluster_refused) == sorted(runs.single_refused)
    # Spread over the primaries, not on one node by luck of the slots.
    assert all(node.dbsize() > 50 for node in runs.cluster.nodes())
    client = connect(runs.cluster.url)
    assert has_state(client)
    assert read_clock(client) == read_clock(redis.Redis.from_url(runs.stack.redis_url))


def test_profile_reads_a_customer_and_a_device_from_the_cluster(runs: Runs) -> None:
    link = next(name for name in runs.on_cluster if name.startswith("engage:link:"))
    device, customer = link[len("engage:link:{"):-1], runs.on_cluster[link].decode()
    for some_id in (customer, device):
        shown = [orjson.loads(engage("profile", some_id, "--json", redis_url=url, stack=runs.stack))
                 for url in (runs.stack.redis_url, runs.cluster.url)]
        assert shown[1] == shown[0]
        assert shown[1]["ids"]["customer"] == customer   # a device id resolves via its link
    text = engage("profile", customer, redis_url=runs.cluster.url, stack=runs.stack)
    assert customer in text


def everything_about(c: LocalRedisCluster, *ids: str) -> list[str]:
    """Every key, set entry and memberships entry of the cluster that names one of ``ids``."""
    found = []
    for node in c.nodes():
        # Keys carry an id as their hash tag: {c-18}, or {~d-5} for a device's own document.
        tags = [f"{{{i}}}".encode() for i in ids] + [f"{{~{i}}}".encode() for i in ids]
        found += [k.decode() for k in node.scan_iter("engage:*") if any(t in k for t in tags)]
        for key in node.scan_iter("engage:members:*"):
            found += [f"{key.decode()} has {m.decode()}" for m in node.smembers(key)
                      if m.decode() in ids]
    return found


def test_forget_erases_a_customer_from_every_node_and_the_engine_keeps_them_out(
        runs: Runs) -> None:
    snap = runs.on_cluster
    # A customer with a linked device, a contact ledger and membership sets.
    devices: dict[str, list[str]] = {}
    for name, value in snap.items():
        if name.startswith("engage:link:"):
            devices.setdefault(value.decode(), []).append(name[len("engage:link:{"):-1])
    customer = next(c for c in sorted(devices) if f"engage:sent:{{{c}}}" in snap
                    and memberships_key(c) in snap)
    other = next(c for c in sorted(devices) if c != customer)
    ids = (customer, *devices[customer])
    assert len(everything_about(runs.cluster, *ids)) > 5

    out = engage("forget", customer, redis_url=runs.cluster.url, stack=runs.stack)
    assert "erased" in out
    assert everything_about(runs.cluster, *ids) == []   # at once, with no engine running
    client = connect(runs.cluster.url)
    records = [orjson.loads(x) for x in client.lrange(ERASURES_KEY, 0, -1)]
    assert len(records) == 1 and records[0]["keys_removed"] > 5
    again = engage("forget", customer, redis_url=runs.cluster.url, stack=runs.stack)
    assert "erased" in again   # a second request finds nothing, and says so without failing

    # The engine resumes from its snapshots: it takes the request, ignores the
    # customer's new events and keeps the other customer going.
    before = read_document(client, state_key(other))
    t = runs.last_ts + MIN
    produce(runs.stack, [view(t + i * MIN, user=u) for i in range(3) for u in (customer, other)])
    engage("run", "--stop-at-end", "--recovery-dir", str(runs.recovery), redis_url=runs.cluster.url,
           stack=runs.stack)
    assert everything_about(runs.cluster, *ids) == []
    after = read_document(client, state_key(other))
    assert after != before


def test_a_new_deployment_takes_over_state_from_the_cluster_and_continues_from_the_end(
        cluster: LocalRedisCluster) -> None:
    cluster.flush()
    client = connect(cluster.url)
    with DevStack(event_partitions=3, with_redis=False) as stack:
        # A new deployment (a lineage of its own) finds state on some primary and
        # takes it over: documents and their takeover copies read slot by slot.
        first, doc = take_over_and_continue(stack, client, cluster.url)
    assert first["lifetime"] == {"product_view": 2, "login": 1}
    assert doc["lifetime"] == {"product_view": 3, "login": 1}   # 2 taken over + 1 new
    assert doc["lin"] != first["lin"] and client.exists("engage:base:{c-9}")


def test_a_takeover_reads_documents_of_many_slots_in_key_order(cluster: LocalRedisCluster) -> None:
    cluster.flush()
    client = connect(cluster.url)
    assert not has_state(client)
    keys = [state_key(f"c-{i}") for i in range(50)]
    for i, key in enumerate(keys[::2]):
        client.set(key, str(i))
    assert len({client.keyslot(k) for k in keys}) > 40
    loaded = make_loader(cluster.url)(keys + ["engage:base:{c-0}"])
    assert loaded == [str(i // 2).encode() if i % 2 == 0 else None for i in range(50)] + [None]
    assert has_state(client)


def test_membership_sets_converge_when_a_batch_is_cut_short_and_written_again(
        cluster: LocalRedisCluster) -> None:
    cluster.flush()
    client = connect(cluster.url)
    partition = RedisStateSink(cluster.url, 3600).build("state", 0, 1)
    try:
        partition.write_batch([StateWrites({state_key("c-1"): b"{}"}, 0,
                                           {"c-1": "stage:active\x1ftag:a", "c-2": "tag:a"})])
        partition.write_batch([StateWrites({}, 0, {"c-2": ""})])
        partition._wait_idle()
        assert client.smembers("engage:members:{tag:a}") == {b"c-1"}
        assert client.get(memberships_key("c-2")) is None
        # A crash after the sets changed but before the memberships key did:
        # the replayed batch finds the old list and applies the same diff again.
        client.srem("engage:members:{tag:a}", "c-1")
        client.sadd("engage:members:{tag:b}", "c-1")
        batch = [StateWrites({}, 5_000, {"c-1": "stage:active\x1ftag:b"})]
        client.script_flush()   # and the primaries forgot the scripts (restarted, failed over)
        partition.write_batch(batch)
        partition.write_batch(batch)
        partition._wait_idle()
        assert client.smembers("engage:members:{tag:a}") == set()
        assert client.smembers("engage:members:{tag:b}") == {b"c-1"}
        assert client.smembers("engage:members:{stage:active}") == {b"c-1"}
        assert client.get(memberships_key("c-1")) == b"stage:active\x1ftag:b"
        assert read_clock(client) == 5_000
    finally:
        partition.close()


def request(customer: str, n: int, ts: int, rule: str, channel: str, group: str) -> LedgerRequest:
    caps = (CapCheck("all", "", 2, ts - WEEK, ts + WEEK, WEEK),
            CapCheck("channel", "sms", 1, ts - WEEK, ts + WEEK, WEEK) if channel == "sms"
            else CapCheck("rule", rule, 1, ts - 3 * DAY, ts + 3 * DAY, 3 * DAY))
    return LedgerRequest(customer, f"a-{n}", ts, rule, channel, group, DAY if group else 0,
                         caps, 400 * DAY)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.lists(st.tuples(st.sampled_from(["c1", "c2", "c3", "c4"]),
                              st.integers(0, 30 * 24).map(lambda h: h * 3_600_000),
                              st.sampled_from(["cart", "nudge"]),
                              st.sampled_from(["push", "sms"]),
                              st.sampled_from(["", "discount"]), st.integers(0, 3)),
                    min_size=1, max_size=30),
       batch=st.integers(1, 9))
def test_the_contact_ledger_on_a_cluster_gives_the_reference_verdicts(
        cluster: LocalRedisCluster, raw: list, batch: int) -> None:
    cluster.flush()
    reqs = [request(cust, i - repeat if i >= repeat else i, ts, rule, channel, group)
            for i, (cust, ts, rule, channel, group, repeat) in enumerate(raw)]
    reference = MemoryLedger.empty()
    ledger = RedisLedger(cluster.url, 400 * DAY)
    try:
        for at in range(0, len(reqs), batch):
            chunk = reqs[at:at + batch]
            assert ledger.decide(chunk) == reference.decide(chunk)
    finally:
        ledger.close()
