"""engage forget: a customer and their devices erased from Redis and from the running engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engage.rules.loader import CATALOG_DIR
from engage.state.keys import ERASURES_KEY, MEMBERS_INDEX, state_key
from engage.state.profile import memberships
from engage.connectors.redis_store import read_document

from helpers import DAY, HOUR, MIN, T0, add, login, paid, view
from stack_helpers import produce, redis_client

pytestmark = pytest.mark.integration


def engine(stack, tmp_path: Path) -> None:
    """The engine as deployed, resuming from its snapshots, with the shipped catalog (tags too)."""
    env = {**os.environ, **stack.env(), "ENGAGE_METRICS_PORT": "0", "ENGAGE_RULES": str(CATALOG_DIR)}
    out = subprocess.run([sys.executable, "-m", "engage.cli", "run", "--stop-at-end",
                          "--recovery-dir", str(tmp_path / "recovery")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def history(t: int, customer: str, device: str) -> list[dict]:
    return [view(t, anon=device), login(t + MIN, customer, device),
            add(t + 2 * MIN, anon=device, sku="SOF-1", price=900.0),
            paid(t + 3 * MIN, customer, f"o-{customer}-{t}", 900.0),
            *[view(t + i * HOUR, user=customer) for i in range(1, 12)]]


def everything_about(r, *ids: str) -> list[bytes]:
    found = [k for k in r.scan_iter("engage:*") if any(i.encode() in k for i in ids)]
    for key in r.scan_iter("engage:members:*"):
        found += [key for m in r.smembers(key) if m.decode() in ids]
    found += [MEMBERS_INDEX.encode() for i in ids if r.hexists(MEMBERS_INDEX, i)]
    return found


def test_forget_erases_a_customer_everywhere_and_the_engine_ignores_them_after(
        stack, tmp_path: Path) -> None:
    produce(stack, history(T0, "c-1", "d-1") + history(T0, "c-2", "d-2"))
    engine(stack, tmp_path)
    r = redis_client(stack)
    assert everything_about(r, "c-1", "d-1") and r.exists(state_key("c-2"))

    env = {**os.environ, **stack.env()}
    out = subprocess.run([sys.executable, "-m", "engage.cli", "forget", "c-1"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "erased" in out.stdout
    assert everything_about(r, "c-1", "d-1") == []   # at once, with no engine running
    records = [orjson.loads(x) for x in r.lrange(ERASURES_KEY, 0, -1)]
    assert len(records) == 1 and records[0]["keys_removed"] > 3
    assert b"c-1" not in r.lrange(ERASURES_KEY, 0, -1)[0]   # no customer data in the record

    # The engine resumes: it takes the request, and the customer's new events
    # (and any replay of old ones) are ignored; the other customer carries on.
    produce(stack, history(T0 + 2 * DAY, "c-1", "d-1") + history(T0 + 2 * DAY, "c-2", "d-2"))
    engine(stack, tmp_path)
    assert everything_about(r, "c-1", "d-1") == []
    c2 = read_document(r, state_key("c-2"))
    assert c2["orders"]["count"] == 2
    for m in memberships(c2["derived"]).split("\x1f"):
        assert r.sismember(f"engage:members:{{{m}}}", "c-2")


def test_forget_without_kafka_and_redis_configured_says_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    out = subprocess.run([sys.executable, "-m", "engage.cli", "forget", "c-1"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "ENGAGE_KAFKA_BOOTSTRAP and ENGAGE_REDIS_URL" in out.stderr
