"""``engage forget``: erase a customer and the devices linked to them, everywhere we keep them.

Two halves, because state lives in two places:

1. Redis, at once: the state document and its takeover copy, the devices'
   links and documents, the contact ledger, every membership set (via the
   membership index). Done here, so the data is gone even while no engine runs.
2. The running engine's memory and snapshots: a request on the control topic
   (``engage.control``) reaches every identity shard and the customer's
   shard, which drop what they hold, delete the keys again (in case a write
   was in flight) and remember a digest of the ids, so that events of the
   customer still in the topic, or replayed later, are ignored.

On a Redis Cluster the Redis half runs per slot instead of as one script:
the customer's own keys, then per device a check-and-delete of its link and
the deletion of its documents, then the membership sets (from the customer's
memberships key) and that key last, so that running it again after a
failure finishes what was left.

What happened is recorded in ``engage:erasures``: the request id, when, and
how many keys were removed; nothing of the customer.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from redis.cluster import RedisCluster

from engage.config import Settings
from engage.connectors.kafka import CONTROL_TOPIC, ensure_topics, produce_all
from engage.connectors.redis_store import SEP, Client, connect, read_document
from engage.events import anon_key
from engage.rules.decide import iso
from engage.state.keys import (ERASURES_KEY, MEMBERS_INDEX, base_key, contact_keys, link_key,
                               members_key, memberships_key, state_key)

# KEYS: the customer's own keys, then per linked device (link, device document,
# its takeover copy), then the membership index. ARGV: the customer, the number
# of devices. A device now linked to someone else is theirs: left alone.
_ERASE = """
local customer, ndev = ARGV[1], tonumber(ARGV[2])
local own = #KEYS - 1 - 3 * ndev
local n = 0
for i = 1, own do n = n + redis.call('DEL', KEYS[i]) end
for d = 0, ndev - 1 do
  local link = KEYS[own + 3 * d + 1]
  if redis.call('GET', link) == customer then
    n = n + redis.call('DEL', link, KEYS[own + 3 * d + 2], KEYS[own + 3 * d + 3])
  end
end
local index = KEYS[#KEYS]
local was = redis.call('HGET', index, customer)
if was then
  for m in string.gmatch(was, '[^\\31]+') do
    n = n + redis.call('SREM', 'MEMBERS{' .. m .. '}', customer)
  end
  redis.call('HDEL', index, customer)
end
return n
""".replace("MEMBERS{", members_key("")[:-1])

# Redis Cluster: a device's link, deleted only while it still names the customer.
# KEYS: the link. ARGV: the customer. Returns the number of keys removed.
_UNLINK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def customer_keys(client: Client, customer: str) -> tuple[list[str], list[str]]:
    """The customer's own Redis keys, and three per device linked to them
    (link, device document, its takeover copy)."""
    own = [state_key(customer), base_key(customer), *contact_keys(customer)]
    doc = read_document(client, state_key(customer))
    devices = doc.get("anon_ids", []) if doc is not None else []
    per_device = [k for device in devices for k in (
        link_key(device), state_key(anon_key(device)), base_key(anon_key(device)))]
    return own, per_device


def forget(settings: Settings, customer: str, now: float | None = None) -> dict[str, Any]:
    """Erase ``customer``; returns the erasure record (what ``engage:erasures`` keeps)."""
    if not settings.kafka_bootstrap or not settings.redis_url:
        raise ValueError("ENGAGE_KAFKA_BOOTSTRAP and ENGAGE_REDIS_URL must be set: the request "
                         "goes to the running engine and the keys are removed from Redis")
    request_id = "erase-" + uuid.uuid4().hex[:16]
    # The engine first: should Redis fail next, the engine still erases.
    ensure_topics(settings.kafka_bootstrap, {CONTROL_TOPIC: 1}, settings.kafka_config)
    produce_all(settings.kafka_bootstrap, CONTROL_TOPIC, [(
        None, orjson.dumps({"forget": customer, "request_id": request_id}))], settings.kafka_config)
    client = connect(settings.redis_url)
    own, per_device = customer_keys(client, customer)
    if isinstance(client, RedisCluster):
        removed = erase_on_cluster(client, customer, own, per_device)
    else:
        keys = own + per_device + [MEMBERS_INDEX]
        removed = int(client.eval(_ERASE, len(keys), *keys, customer, len(per_device) // 3))
    record = {"request_id": request_id, "at": iso(int((now or time.time()) * 1000)),
              "keys_removed": removed}
    client.rpush(ERASURES_KEY, orjson.dumps(record))
    return record


def erase_on_cluster(client: RedisCluster, customer: str, own: list[str],
                     per_device: list[str]) -> int:
    """What :data:`_ERASE` does, slot by slot; the number of keys (and set entries) removed.

    Not atomic across slots, and need not be: the engine erases again when
    it takes the request, and a second run of this finds nothing left.
    """
    removed = int(client.delete(*own))   # one slot: the customer's hash tag
    for d in range(0, len(per_device), 3):
        link, document, base = per_device[d:d + 3]
        if int(client.eval(_UNLINK, 1, link, customer)):
            # The device's documents share their own tag ({~DEVICE}), not the link's.
            removed += 1 + int(client.delete(document, base))
    index = memberships_key(customer)
    was = client.get(index)
    if was is not None:
        for m in was.decode().split(SEP):
            if m:
                removed += int(client.srem(members_key(m), customer))
        client.delete(index)   # last: a failure before leaves it to say what to redo
    return removed
