"""The contact ledger in Redis: caps and conflict groups checked for a whole batch in one script.

Same algorithm as :mod:`engage.state.contact` (the reference, tested to give
the same verdicts), run atomically server-side: one ``EVALSHA`` per batch of
candidates, whatever their number, and correct however many workers call it.
Per customer, a sorted set holds the admitted action ids by event time and a
hash what each one was (rule, channel, conflict group); both share the
customer's hash tag.

On a Redis Cluster a script sees one slot only, so a batch becomes one call
per customer (a customer's requests in their order, which is all a verdict
depends on), pipelined: one round trip per node instead of one in all.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.cluster import RedisCluster

from engage.connectors.redis_store import (Client, call_until_answered, connect,
                                           run_cluster_pipeline)
from engage.monitoring import metrics
from engage.state.contact import LedgerRequest
from engage.state.keys import contact_keys

# KEYS: per customer, its sorted set then its hash.
# ARGV[1]: ttl in ms; ARGV[2]: JSON [[customer index (1-based), request wire form], ...].
# Returns a JSON list of verdicts, in order.
_DECIDE = r"""
local ttl = tonumber(ARGV[1])
local reqs = cjson.decode(ARGV[2])
local SEP = '\31'
local out = {}

local function split(meta)
  local a, b = string.find(meta, SEP, 1, true)
  local c, d = string.find(meta, SEP, b + 1, true)
  return string.sub(meta, 1, a - 1), string.sub(meta, b + 1, c - 1), string.sub(meta, d + 1)
end

local function cap_allows(times, ts, cap)
  local mx, lo, hi, per = cap[3], cap[4], cap[5], cap[6]
  if per <= 0 then
    local n = 0
    for _, t in ipairs(times) do if t >= lo and t < hi then n = n + 1 end end
    return n + 1 <= mx
  end
  local near = {ts}
  for _, t in ipairs(times) do
    if t > ts - per and t < ts + per then near[#near + 1] = t end
  end
  table.sort(near)
  for _, start in ipairs(near) do
    if start > ts then break end
    if start > ts - per then
      local n = 0
      for _, t in ipairs(near) do
        if t >= start and t < start + per then n = n + 1 end
      end
      if n > mx then return false end
    end
  end
  return true
end

for i, item in ipairs(reqs) do
  local z, h = KEYS[2 * item[1] - 1], KEYS[2 * item[1]]
  local r = item[2]
  local id, ts, rule, channel, group, gw, caps, keep = r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]
  if redis.call('ZSCORE', z, id) then
    out[i] = 'send'
  else
    local lo, hi = ts - gw, ts + gw
    for _, cap in ipairs(caps) do
      if cap[4] < lo then lo = cap[4] end
      if cap[5] > hi then hi = cap[5] end
    end
    local rows = redis.call('ZRANGEBYSCORE', z, lo, hi, 'WITHSCORES')
    local ids, times = {}, {}
    for j = 1, #rows, 2 do
      ids[#ids + 1] = rows[j]
      times[#times + 1] = tonumber(rows[j + 1])
    end
    local metas = {}
    if #ids > 0 then metas = redis.call('HMGET', h, unpack(ids)) end
    local entries = {}
    for j = 1, #ids do
      local m = metas[j]
      if m then
        local er, ec, eg = split(m)
        entries[#entries + 1] = {times[j], er, ec, eg}
      end
    end
    local verdict = 'send'
    for _, cap in ipairs(caps) do
      local scoped = {}
      for _, e in ipairs(entries) do
        if cap[1] == 'all' or (cap[1] == 'channel' and e[3] == cap[2])
           or (cap[1] == 'rule' and e[2] == cap[2]) then
          scoped[#scoped + 1] = e[1]
        end
      end
      if not cap_allows(scoped, ts, cap) then verdict = 'cap' break end
    end
    if verdict == 'send' and group ~= '' then
      for _, e in ipairs(entries) do
        if e[4] == group and math.abs(e[1] - ts) < gw then verdict = 'conflict' break end
      end
    end
    if verdict == 'send' then
      redis.call('ZADD', z, ts, id)
      redis.call('HSET', h, id, rule .. SEP .. channel .. SEP .. group)
      local old = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. (ts - keep))
      if #old > 0 then
        redis.call('ZREM', z, unpack(old))
        redis.call('HDEL', h, unpack(old))
      end
      redis.call('PEXPIRE', z, ttl)
      redis.call('PEXPIRE', h, ttl)
    end
    out[i] = verdict
  end
end
return cjson.encode(out)
"""


class RedisLedger:
    """Decides batches of :class:`LedgerRequest` against the ledger in Redis."""

    def __init__(self, url: str, ttl_ms: int) -> None:
        self.client: Client = connect(url)
        self.ttl_ms = ttl_ms
        self.script = self.client.register_script(_DECIDE)
        self.cluster: RedisCluster | None = (
            self.client if isinstance(self.client, RedisCluster) else None)

    def decide(self, requests: list[LedgerRequest]) -> list[str]:
        """Verdicts (send, cap, conflict) in order; admitted requests are recorded."""
        if not requests:
            return []
        if self.cluster is not None:
            return self._decide_per_customer(self.cluster, requests)
        index: dict[str, int] = {}
        keys: list[str] = []
        wire: list[Any] = []
        for req in requests:
            i = index.get(req.customer)
            if i is None:
                i = index[req.customer] = len(index) + 1
                keys.extend(contact_keys(req.customer))
            wire.append([i, req.to_wire()])
        args = [self.ttl_ms, orjson.dumps(wire)]
        started = time.perf_counter()
        # Like state writes: wait for Redis rather than send unchecked.
        raw = call_until_answered(lambda: self.script(keys=keys, args=args), "contact ledger",
                                  "contact_ledger")
        metrics.LEDGER_SECONDS.observe(time.perf_counter() - started)
        return [str(v) for v in orjson.loads(raw)]

    def _decide_per_customer(self, cluster: RedisCluster,
                             requests: list[LedgerRequest]) -> list[str]:
        """The cluster form: one script call per customer, all pipelined.

        A verdict depends only on its customer's ledger and the customer's
        earlier requests of the batch, so splitting per customer keeps every
        verdict the same as one call over the whole batch would give.
        """
        positions: dict[str, list[int]] = {}
        for at, req in enumerate(requests):
            positions.setdefault(req.customer, []).append(at)
        calls = [(customer, orjson.dumps([[1, requests[at].to_wire()] for at in where]))
                 for customer, where in positions.items()]
        sha = self.script.sha   # loaded on a node that lacks it by run_cluster_pipeline

        def build(pipe: Any) -> None:
            for customer, wire in calls:
                pipe.execute_command("EVALSHA", sha, 2, *contact_keys(customer), self.ttl_ms, wire)

        started = time.perf_counter()
        replies = call_until_answered(
            lambda: run_cluster_pipeline(cluster, {sha: _DECIDE}, build), "contact ledger",
            "contact_ledger")
        metrics.LEDGER_SECONDS.observe(time.perf_counter() - started)
        verdicts = [""] * len(requests)
        for (customer, _), raw in zip(calls, replies):
            for at, verdict in zip(positions[customer], orjson.loads(raw)):
                verdicts[at] = str(verdict)
        return verdicts

    def close(self) -> None:
        """Release the connection."""
        self.client.close()
