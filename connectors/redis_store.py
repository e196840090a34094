"""Redis at the edge: one round trip per batch to write state, and reads for the CLI.

redis-py spends most of a pipelined batch encoding commands and parsing
replies in Python, so a batch is one ``EVALSHA`` of a small Lua script that
does every ``SET``/``DEL`` server-side: one command, one reply, whatever the
number of customers touched.

Against a Redis Cluster (a ``redis+cluster://`` or ``rediss+cluster://`` URL)
a script may only touch keys of one slot, so the batch is split per slot:
one script call per slot, all of them pipelined (one round trip per node),
then the membership sets, each updated on its own (see
:class:`_ClusterStatePartition`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from typing import Any, Callable, Union

import orjson
import redis
from redis.cluster import RedisCluster
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from engage.monitoring import metrics
from engage.operators.records import StateWrites
from engage.events import anon_key
from engage.state.codec import Encoder, decode, decode_optional
from engage.state.keys import (CLOCK_KEY, DOCUMENT_PREFIXES, MEMBERS_INDEX, STATE_PATTERN,
                               link_key, members_key, memberships_key, state_key)

log = logging.getLogger(__name__)

# KEYS: keys to set, then keys to delete, then the clock key, then the membership index.
# ARGV: ttl seconds, number of sets, clock value (0 = none), number of membership
# updates, then the values to set, then (customer, memberships) pairs.
_WRITE_BATCH = """
local ttl = tonumber(ARGV[1])
local nset = tonumber(ARGV[2])
local clock = tonumber(ARGV[3])
local nmem = tonumber(ARGV[4])
local nkeys = #KEYS - 2
for i = 1, nset do
  redis.call('SET', KEYS[i], ARGV[i + 4], 'EX', ttl)
end
for i = nset + 1, nkeys do
  redis.call('DEL', KEYS[i])
end
if clock > 0 then
  local current = tonumber(redis.call('GET', KEYS[#KEYS - 1]) or '0')
  if clock > current then redis.call('SET', KEYS[#KEYS - 1], ARGV[3]) end
end
-- Membership sets follow each customer's latest list: the index remembers
-- the previous one, so replays and restarts converge instead of drifting.
local index = KEYS[#KEYS]
local at = 4 + nset
for j = 0, nmem - 1 do
  local customer = ARGV[at + 2 * j + 1]
  local now = ARGV[at + 2 * j + 2]
  local old = redis.call('HGET', index, customer) or ''
  if old ~= now then
    local was, is = {}, {}
    for m in string.gmatch(old, '[^\\31]+') do was[m] = true end
    for m in string.gmatch(now, '[^\\31]+') do
      is[m] = true
      if not was[m] then redis.call('SADD', 'MEMBERS{' .. m .. '}', customer) end
    end
    for m in pairs(was) do
      if not is[m] then redis.call('SREM', 'MEMBERS{' .. m .. '}', customer) end
    end
    if now == '' then redis.call('HDEL', index, customer) else redis.call('HSET', index, customer, now) end
  end
end
return nset
""".replace("MEMBERS{", members_key("")[:-1])

# Redis Cluster: one call per slot. KEYS: keys to set, keys to delete, then the
# memberships keys (memberships_key) of customers whose sets may change.
# ARGV: ttl seconds, number of sets, number of deletes, then the values to set.
# Returns each memberships key's current value ('' for none): the caller
# updates the sets first and the memberships keys last, so a batch cut short
# is redone in full when replayed (the diff is taken against the old value).
_WRITE_SLOT = """
local ttl = tonumber(ARGV[1])
local nset = tonumber(ARGV[2])
local nkeys = nset + tonumber(ARGV[3])
for i = 1, nset do
  redis.call('SET', KEYS[i], ARGV[i + 3], 'EX', ttl)
end
for i = nset + 1, nkeys do
  redis.call('DEL', KEYS[i])
end
local old = {}
for i = nkeys + 1, #KEYS do
  old[#old + 1] = redis.call('GET', KEYS[i]) or ''
end
return old
"""

# Redis Cluster: the clock key on its own (it has a slot of its own).
_ADVANCE_CLOCK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""

SEP = "\x1f"
"""Separates membership names in the index (and in the scripts: '\\31')."""

Client = Union[redis.Redis, RedisCluster]
"""A client of one Redis node, or of a Redis Cluster (:func:`connect` picks)."""

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""URL schemes that ask for a Redis Cluster client, and the plain scheme each stands for."""

# A cluster in the middle of a failover or a resharding says so with these;
# like a lost connection, they pass once the cluster has settled.
_RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
              redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
              redis.exceptions.ClusterError)

RETRY_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def call_until_answered(call: Any, what: str, op: str = "other") -> Any:
    """``call()``, retried with backoff while Redis is unreachable; returns its result.

    Retrying forever is deliberate: the dataflow stops taking input until
    Redis answers, and no accepted event (or decision) is lost or skipped.
    ``op`` labels the retries metric (a fixed name, never data).
    """
    attempt = 0
    while True:
        try:
            return call()
        except _RETRYABLE as exc:
            metrics.REDIS_ERRORS.inc()
            metrics.REDIS_RETRIES.labels(op).inc()
            delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            if attempt % 10 == 0:
                log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
            time.sleep(delay)
            attempt += 1
        except redis.RedisError:
            metrics.REDIS_ERRORS.inc()   # not retryable (script error, AUTH refused): counted, raised
            raise


def cluster_url(url: str) -> str | None:
    """The plain URL of a Redis Cluster URL (``redis+cluster://``), None for any other.

    >>> cluster_url("rediss+cluster://:pw@r1:7000"), cluster_url("redis://r:6379/0")
    ('rediss://:pw@r1:7000', None)
    """
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower()) if sep else None
    return f"{plain}://{rest}" if plain else None


def connect(url: str) -> Client:
    """A client for ``redis://`` or ``rediss://`` (TLS) URLs, with AUTH from the URL;
    a Redis Cluster client for ``redis+cluster://`` or ``rediss+cluster://`` (any node
    of the cluster as host: the client discovers the others)."""
    plain = cluster_url(url)
    if plain is not None:
        return RedisCluster.from_url(plain, socket_timeout=10, socket_connect_timeout=5,
                                     health_check_interval=30)
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=30)


def run_cluster_pipeline(client: RedisCluster, scripts: dict[str, str],
                         build: Callable[[Any], None]) -> list[Any]:
    """Run the commands ``build`` puts in a cluster pipeline; their replies, in order.

    Commands go per node in parallel (one round trip per node, not per slot).
    Scripts go in as ``execute_command("EVALSHA", ...)``: redis-py blocks its
    ``evalsha`` method in cluster pipelines (a leftover of redis-py-cluster),
    while the command itself is routed by its keys' slot like any other.
    ``scripts`` (sha -> source) are the scripts ``build`` calls by ``EVALSHA``:
    a node that does not know one (restarted, or a new primary after a
    failover) has them all loaded, and the whole pipeline is sent again, so
    every command in it must be safe to run twice.
    """
    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        build(pipe)
        try:
            return pipe.execute()
        except redis.exceptions.NoScriptError:
            if attempt:
                raise
            for source in scripts.values():
                client.script_load(source)   # a cluster client loads it on every primary
    raise AssertionError("unreachable")


class _StatePartition(StatelessSinkPartition[Any]):
    """Hands each batch to a writer thread, so the next batch is computed while
    Redis executes this one (Redis runs the script for as long as the engine
    takes to compute a batch; waiting for it would halve the throughput).

    At most one batch is in flight: ``write_batch`` waits for the previous
    one first, so a slow or unreachable Redis slows the intake instead of
    piling up memory, and a write never lags by more than one batch. A batch
    still in flight when the process dies is written again after the
    restart: restored shards rewrite what they wrote in their last epochs.
    """

    def __init__(self, client: Client, ttl_s: int, codec: str = "zstd") -> None:
        self.client = client
        self.ttl = str(ttl_s)
        #: Used by the writer thread only (compressing there overlaps the next batch).
        self.encoder = Encoder(codec)
        self.script = client.register_script(_WRITE_BATCH)
        # (what _send writes, keys set, keys deleted, clock written): one batch.
        self.queue: queue.Queue[tuple[Any, int, int, int] | None] = queue.Queue()
        self.idle = threading.Event()
        self.idle.set()
        self.failure: BaseException | None = None
        #: A watermark reached Redis: from then on the clock key must be there.
        self.clock_written = False
        self.writer = threading.Thread(target=self._drain, name="redis-state-writer", daemon=True)
        self.writer.start()

    def _wait_idle(self) -> None:
        while not self.idle.wait(1.0):
            if self.failure is not None or not self.writer.is_alive():
                break
        if self.failure is not None:
            raise RuntimeError("the Redis state writer stopped") from self.failure

    @staticmethod
    def _merge(items: list[StateWrites]) -> tuple[dict[str, bytes | None], dict[str, str], int]:
        """One batch's writes, memberships and clock; the last write of a key wins."""
        # Last write wins within a batch (a state set, then deleted on expiry).
        latest: dict[str, bytes | None] = {}
        members: dict[str, str] = {}
        clock = 0
        for item in items:
            latest.update(item.writes)
            if item.members:
                members.update(item.members)
            if item.watermark > clock:
                clock = item.watermark
        return latest, members, clock

    def write_batch(self, items: list[StateWrites]) -> None:
        self._wait_idle()
        latest, members, clock = self._merge(items)
        if not latest and not clock and not members:
            return
        sets = [(k, v) for k, v in latest.items() if v is not None]
        dels = [k for k, v in latest.items() if v is None]
        keys = [k for k, _ in sets] + dels + [CLOCK_KEY, MEMBERS_INDEX]
        args: list[Any] = [self.ttl, len(sets), clock, len(members)]
        args.extend(v for _, v in sets)
        for customer, now_in in members.items():
            args.extend((customer, now_in))
        self.idle.clear()
        self.queue.put(((keys, args), len(sets), len(dels), clock))

    def _encode(self, payload: Any, n_set: int) -> Any:
        """The payload with its state documents encoded for storage (writer thread)."""
        keys, args = payload
        if self.encoder.codec == "json":
            return payload
        encode = self.encoder.encode
        for i in range(n_set):
            if keys[i].startswith(DOCUMENT_PREFIXES):
                args[4 + i] = encode(args[4 + i])
        return payload

    def _drain(self) -> None:
        try:
            while True:
                job = self.queue.get()
                if job is None:
                    return
                payload, n_set, n_del, clock = job
                started = time.perf_counter()
                payload = self._encode(payload, n_set)
                self._call(payload, clock)
                metrics.STATE_WRITE_SECONDS.observe(time.perf_counter() - started)
                metrics.STATE_KEYS_WRITTEN.labels("set").inc(n_set)
                if n_del:
                    metrics.STATE_KEYS_WRITTEN.labels("del").inc(n_del)
                self.idle.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the next write_batch
            self.failure = exc
            log.exception("Redis state writer failed")

    def _send(self, payload: Any) -> None:
        """One batch to Redis: the script, once."""
        keys, args = payload
        self.script(keys=keys, args=args)

    def _call(self, payload: Any, clock: int) -> None:
        """Write, waiting for Redis while it is unreachable (the queue then fills).

        A batch whose reply was lost may already have run: running it again
        sets the same whole documents and memberships, so nothing counts twice.
        """
        try:
            self._send(payload)
        except _RETRYABLE as exc:
            metrics.REDIS_ERRORS.inc()
            metrics.REDIS_RETRIES.labels("state_write").inc()
            log.warning("Redis write failed (%s); waiting for Redis", exc)
            self._check_kept_data()
            call_until_answered(lambda: self._send(payload), "Redis write", "state_write")
        if clock > 0:
            self.clock_written = True

    def _check_kept_data(self) -> None:
        """Once Redis answers again, say loudly if it came back without our data.

        Documents are rewritten only for customers that change, so a Redis
        restarted without persistence stays without the others until they do;
        the clock key, written with every watermark and never expiring, tells.
        """
        kept = call_until_answered(lambda: self.client.exists(CLOCK_KEY), "Redis check",
                                   "state_write")
        if self.clock_written and not kept:
            log.error("Redis came back without the engine's data (restarted without "
                      "persistence?): state documents of customers that do not change from "
                      "now on stay missing. Run Redis with AOF persistence; to rebuild, replay "
                      "the topic into it with a new recovery directory")

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self._wait_idle()
        self.queue.put(None)
        self.writer.join()
        self.client.close()


class _ClusterBatch:
    """One batch for a Redis Cluster: writes grouped per slot, memberships, clock."""

    __slots__ = ("slots", "members", "clock")

    def __init__(self, slots: dict[int, tuple[list[str], list[bytes], list[str], list[str]]],
                 members: dict[str, str], clock: int) -> None:
        #: slot -> (keys to set, their values, keys to delete, customers whose sets may change)
        self.slots = slots
        self.members = members
        self.clock = clock


class _ClusterStatePartition(_StatePartition):
    """The state writer against a Redis Cluster, where a script sees one slot only.

    A batch takes up to three pipelined round trips (each one per node, in parallel):

    1. per slot, one script call sets and deletes that slot's keys and reads
       the memberships keys (:func:`~engage.state.keys.memberships_key`) of
       its customers; the clock has its own call;
    2. the membership sets that change: one ``SADD``/``SREM`` per set;
    3. the memberships keys, set to the new lists.

    Sets before memberships keys: a batch cut short after step 2 is replayed
    after a restart (restored shards rewrite their last epochs) against the
    old memberships keys, so the same diff is applied again and the sets
    converge; only the atomicity of a document with its sets is lost (for
    one batch, a reader may see a document before its sets follow).
    """

    def __init__(self, client: RedisCluster, ttl_s: int, codec: str = "zstd") -> None:
        super().__init__(client, ttl_s, codec)
        self.cluster = client
        self.write_sha = client.script_load(_WRITE_SLOT)
        self.clock_sha = client.script_load(_ADVANCE_CLOCK)
        self.scripts = {self.write_sha: _WRITE_SLOT, self.clock_sha: _ADVANCE_CLOCK}

    def write_batch(self, items: list[StateWrites]) -> None:
        self._wait_idle()
        latest, members, clock = self._merge(items)
        if not latest and not clock and not members:
            return
        slot_of = self.cluster.keyslot
        slots: dict[int, tuple[list[str], list[bytes], list[str], list[str]]] = {}
        n_set = n_del = 0
        for key, value in latest.items():
            slot = slot_of(key)
            group = slots.get(slot)
            if group is None:
                group = slots[slot] = ([], [], [], [])
            if value is None:
                group[2].append(key)
                n_del += 1
            else:
                group[0].append(key)
                group[1].append(value)
                n_set += 1
        for customer in members:
            slot = slot_of(memberships_key(customer))
            group = slots.get(slot)
            if group is None:
                group = slots[slot] = ([], [], [], [])
            group[3].append(customer)
        self.idle.clear()
        self.queue.put((_ClusterBatch(slots, members, clock), n_set, n_del, clock))

    def _encode(self, payload: Any, n_set: int) -> Any:
        batch: _ClusterBatch = payload
        if self.encoder.codec != "json":
            encode = self.encoder.encode
            for sets, values, _, _ in batch.slots.values():
                for i, key in enumerate(sets):
                    if key.startswith(DOCUMENT_PREFIXES):
                        values[i] = encode(values[i])
        return batch

    def _send(self, payload: Any) -> None:
        batch: _ClusterBatch = payload
        order = list(batch.slots.values())

        def documents(pipe: Any) -> None:
            for sets, values, dels, customers in order:
                keys = [*sets, *dels, *(memberships_key(c) for c in customers)]
                pipe.execute_command("EVALSHA", self.write_sha, len(keys), *keys, self.ttl,
                                     len(sets), len(dels), *values)
            if batch.clock:
                pipe.execute_command("EVALSHA", self.clock_sha, 1, CLOCK_KEY, batch.clock)

        replies = run_cluster_pipeline(self.cluster, self.scripts, documents)
        changed: dict[str, str] = {}
        joins: dict[str, list[str]] = defaultdict(list)
        leaves: dict[str, list[str]] = defaultdict(list)
        for (_, _, _, customers), old_values in zip(order, replies):
            for customer, old_raw in zip(customers, old_values):
                old = old_raw.decode() if isinstance(old_raw, bytes) else str(old_raw)
                now = batch.members[customer]
                if old == now:
                    continue
                changed[customer] = now
                was, is_in = set(old.split(SEP)) - {""}, set(now.split(SEP)) - {""}
                for m in is_in - was:
                    joins[m].append(customer)
                for m in was - is_in:
                    leaves[m].append(customer)
        if not changed:
            return

        def sets(pipe: Any) -> None:
            for m, customers in joins.items():
                pipe.sadd(members_key(m), *customers)
            for m, customers in leaves.items():
                pipe.srem(members_key(m), *customers)

        def index(pipe: Any) -> None:
            for customer, now in changed.items():
                if now:
                    pipe.set(memberships_key(customer), now)
                else:
                    pipe.delete(memberships_key(customer))

        if joins or leaves:
            run_cluster_pipeline(self.cluster, {}, sets)
        run_cluster_pipeline(self.cluster, {}, index)


class RedisStateSink(DynamicSink[StateWrites]):
    """Writes :class:`StateWrites` records, one round trip per batch.

    ``codec``: how state documents are stored (:mod:`engage.state.codec`).
    """

    def __init__(self, url: str, ttl_s: int, codec: str = "zstd") -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.codec = codec

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StatePartition:
        client = connect(self.url)
        if isinstance(client, RedisCluster):
            return _ClusterStatePartition(client, self.ttl_s, self.codec)
        return _StatePartition(client, self.ttl_s, self.codec)


def mget(client: Client, keys: list[str]) -> list[bytes | None]:
    """The values of ``keys``, in order: one ``MGET``, or on a cluster one per slot
    (pipelined, so one round trip per node; not atomic across slots)."""
    if not keys:
        return []
    if isinstance(client, RedisCluster):
        return client.mget_nonatomic(keys)
    return client.mget(keys)


def make_loader(url: str) -> Any:
    """A bootstrap loader: several keys in one ``MGET`` (per slot on a cluster)."""
    client = connect(url)

    def load(keys: list[str]) -> list[bytes | None]:
        # Like writes, a takeover waits for Redis rather than start customers empty.
        # The shards read JSON: documents are decoded here, at the edge.
        values = call_until_answered(lambda: mget(client, keys), "bootstrap read",
                                     "bootstrap") if keys else []
        return [decode_optional(v) for v in values]

    return load


def _node_has_state(client: redis.Redis) -> bool:
    cursor, keys = client.scan(0, match=STATE_PATTERN, count=1000)
    while not keys and cursor:
        cursor, keys = client.scan(cursor, match=STATE_PATTERN, count=1000)
    return bool(keys)


def primaries(client: Client) -> list[redis.Redis]:
    """A client per node that holds data: the node itself, or every primary of a cluster."""
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def has_state(client: Client) -> bool:
    """True when Redis already holds customer state (written by any deployment);
    on a cluster, when any primary holds some."""
    return any(_node_has_state(node) for node in primaries(client))


def read_customer(client: Client, some_id: str) -> tuple[str, dict[str, Any]] | None:
    """The state document for a customer id, or for a device id via its link."""
    raw = client.get(state_key(some_id))
    key = some_id
    if raw is None:
        linked = client.get(link_key(some_id))
        if linked is not None:
            key = linked.decode()
            raw = client.get(state_key(key))
        else:
            key = anon_key(some_id)
            raw = client.get(state_key(key))
    if raw is None:
        return None
    return key, orjson.loads(decode(raw))


def read_document(client: Client, key: str) -> dict[str, Any] | None:
    """The state document stored at ``key`` (``state_key(...)``), decoded; None if absent."""
    raw = client.get(key)
    return None if raw is None else orjson.loads(decode(raw))


def read_clock(client: Client) -> int | None:
    """The event-time watermark the engine last published."""
    raw = client.get(CLOCK_KEY)
    return int(raw) if raw is not None else None


# Compare-and-set: a document the engine rewrote meanwhile is left as the engine wrote it.
_RECODE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""


def recode(client: Client, codec: str, chunk: int = 500) -> dict[str, int]:
    """Rewrite every stored state document with ``codec`` (``engage recode-state``).

    What a rollback to a version that reads only JSON needs (documents are
    rewritten only when their customer changes, so a quiet customer's stays
    as it was written for up to ``inactive_ttl``), or a switch to zstd for
    documents written before. Each key is swapped only if it still holds
    what was read (a script compares), keeping its TTL, so the engine may
    keep running. Returns how many documents were seen, rewritten, and
    already in ``codec`` (or changed by the engine meanwhile).
    """
    encoder = Encoder(codec)
    seen = rewritten = 0
    for node in primaries(client):
        script = node.register_script(_RECODE)
        keys: list[bytes] = []
        for prefix in DOCUMENT_PREFIXES:
            keys.extend(node.scan_iter(match=prefix + "*", count=1000))
        for at in range(0, len(keys), chunk):
            part = keys[at:at + chunk]
            reads = node.pipeline(transaction=False)
            for key in part:
                reads.get(key)
            olds = reads.execute()
            writes = node.pipeline(transaction=False)
            queued = 0
            for key, old in zip(part, olds):
                if old is None:
                    continue
                seen += 1
                new = encoder.encode(decode(old))
                if new != old:
                    script(keys=[key], args=[old, new], client=writes)
                    queued += 1
            if queued:
                rewritten += sum(int(x) for x in writes.execute())
    return {"seen": seen, "rewritten": rewritten, "unchanged": seen - rewritten}
