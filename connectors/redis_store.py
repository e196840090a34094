"""Redis at the edge: one round trip per batch to write state, and reads for the CLI.

redis-py spends most of a pipelined batch encoding commands and parsing
replies in Python, so a batch is one ``EVALSHA`` of a small Lua script that
does every ``SET``/``DEL`` server-side: one command, one reply, whatever the
number of customers touched.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from engage.monitoring import metrics
from engage.operators.records import StateWrites
from engage.events import anon_key
from engage.state.keys import (CLOCK_KEY, MEMBERS_INDEX, STATE_PATTERN, link_key, members_key,
                               state_key)

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
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
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


def connect(url: str) -> redis.Redis:
    """A client for ``redis://`` or ``rediss://`` (TLS) URLs, with AUTH from the URL."""
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=30)


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

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl = str(ttl_s)
        self.script = client.register_script(_WRITE_BATCH)
        self.queue: queue.Queue[tuple[list[str], list[Any], int, int] | None] = queue.Queue()
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

    def write_batch(self, items: list[StateWrites]) -> None:
        self._wait_idle()
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
        self.queue.put((keys, args, len(sets), len(dels)))

    def _drain(self) -> None:
        try:
            while True:
                job = self.queue.get()
                if job is None:
                    return
                keys, args, n_set, n_del = job
                started = time.perf_counter()
                self._call(keys, args)
                metrics.STATE_WRITE_SECONDS.observe(time.perf_counter() - started)
                metrics.STATE_KEYS_WRITTEN.labels("set").inc(n_set)
                if n_del:
                    metrics.STATE_KEYS_WRITTEN.labels("del").inc(n_del)
                self.idle.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the next write_batch
            self.failure = exc
            log.exception("Redis state writer failed")

    def _call(self, keys: list[str], args: list[Any]) -> None:
        """Write, waiting for Redis while it is unreachable (the queue then fills).

        A batch whose reply was lost may already have run: running it again
        sets the same whole documents and memberships, so nothing counts twice.
        """
        try:
            self.script(keys=keys, args=args)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            metrics.REDIS_ERRORS.inc()
            metrics.REDIS_RETRIES.labels("state_write").inc()
            log.warning("Redis write failed (%s); waiting for Redis", exc)
            self._check_kept_data()
            call_until_answered(lambda: self.script(keys=keys, args=args), "Redis write",
                                "state_write")
        if int(args[2]) > 0:
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


class RedisStateSink(DynamicSink[StateWrites]):
    """Writes :class:`StateWrites` records, one round trip per batch."""

    def __init__(self, url: str, ttl_s: int) -> None:
        self.url = url
        self.ttl_s = ttl_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StatePartition:
        return _StatePartition(connect(self.url), self.ttl_s)


def make_loader(url: str) -> Any:
    """A bootstrap loader: several keys in one ``MGET``."""
    client = connect(url)

    def load(keys: list[str]) -> list[bytes | None]:
        # Like writes, a takeover waits for Redis rather than start customers empty.
        return call_until_answered(lambda: client.mget(keys), "bootstrap read",
                                   "bootstrap") if keys else []

    return load


def has_state(client: redis.Redis) -> bool:
    """True when Redis already holds customer state (written by any deployment)."""
    cursor, keys = client.scan(0, match=STATE_PATTERN, count=1000)
    while not keys and cursor:
        cursor, keys = client.scan(cursor, match=STATE_PATTERN, count=1000)
    return bool(keys)


def read_customer(client: redis.Redis, some_id: str) -> tuple[str, dict[str, Any]] | None:
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
    return key, orjson.loads(raw)


def read_clock(client: redis.Redis) -> int | None:
    """The event-time watermark the engine last published."""
    raw = client.get(CLOCK_KEY)
    return int(raw) if raw is not None else None
