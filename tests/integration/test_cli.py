"""The `engage` program as a user runs it: profile, run with bad settings, demo, takeover."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import orjson
import pytest

from engage.connectors.devstack import REDIS_HELP, DevStack, DevStackError
from engage.state.keys import state_key

from stack_helpers import produce, redis_client, run_engine, take_over_and_continue
from helpers import DAY, HOUR, MIN, T0, add, login, paid, view

ENGAGE = [sys.executable, "-m", "engage.cli"]


def engage(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ENGAGE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_profile_shows_the_merged_customer_view(stack) -> None:
    produce(stack, [view(T0, anon="d-7"), login(T0 + MIN, "c-7", "d-7"),
                    paid(T0 + 2 * MIN, "c-7", "o-1", 120.0),
                    add(T0 + 3 * MIN, anon="d-7", sku="SOF-9", price=899.0),
                    view(T0 + DAY, user="c-7", category="lamp")])
    run_engine(stack, model_warmup=0)   # shown untrained: no labels come due in a day
    env = {"ENGAGE_REDIS_URL": stack.redis_url}
    text = engage("profile", "c-7", env=env)
    assert text.returncode == 0, text.stderr
    assert "customer  c-7" in text.stdout and "d-7" in text.stdout
    assert "orders    1 (spend 120.0)" in text.stdout
    assert "SOF-9" in text.stdout  # added on the device after the order: in the cart
    as_json = engage("profile", "c-7", "--json", env=env)
    view_doc = orjson.loads(as_json.stdout)
    assert view_doc["ids"] == {"customer": "c-7", "devices": ["d-7"]}
    assert view_doc["lifetime"]["orders"] == 1 and view_doc["lifetime"]["spend"] == 120.0
    assert view_doc["windows"]["product_view"]["30d"] == 2
    assert view_doc["last_seen"]["product_view"].startswith("2026-09-22")
    assert [line["sku"] for line in view_doc["cart"]] == ["SOF-9"]
    # The profile: stage and tier with since when, RFM values and scores, segment, tags, scores.
    assert view_doc["stage"] == {"name": "new", "since": "2026-09-21T14:15:20.000Z"}
    assert view_doc["tier"]["name"] == "regular"
    assert view_doc["rfm"]["frequency"] == 1 and view_doc["rfm"]["monetary"] == 120.0
    assert view_doc["rfm"]["recency_days"] == 0 and view_doc["rfm"]["scores"]["r"] == 5
    assert view_doc["segment"]["name"] == "develop_new"
    assert isinstance(view_doc["tags"], list)
    # The models scored the customer (untrained, warm-up 0: one half), and say which model
    # version did.
    assert set(view_doc["scores"]) == {"churn_risk", "repurchase_30d"}
    assert all(0.0 <= v <= 1.0 for v in view_doc["scores"].values())
    assert view_doc["models"]["churn_risk"]["version"].startswith("logreg-")
    assert "churn_risk=" in text.stdout and "logreg-" in text.stdout
    assert "stage     new" in text.stdout and "segment develop_new" in text.stdout
    # A device id finds its customer too.
    assert orjson.loads(engage("profile", "d-7", "--json", env=env).stdout)["customer"] == "c-7"


def test_profile_of_an_unknown_customer_says_so(stack) -> None:
    out = engage("profile", "nobody", env={"ENGAGE_REDIS_URL": stack.redis_url})
    assert out.returncode == 1 and "no customer or device 'nobody'" in out.stderr


def test_profile_without_redis_configured_explains_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ENGAGE_REDIS_URL"}
    out = subprocess.run([*ENGAGE, "profile", "c-1"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "ENGAGE_REDIS_URL is not set" in out.stderr


def test_a_bad_setting_is_refused_by_name() -> None:
    out = engage("run", "--lateness", "5 minutes", env={"ENGAGE_KAFKA_BOOTSTRAP": "x:1",
                                                         "ENGAGE_REDIS_URL": "redis://x:1"})
    assert out.returncode == 2
    assert "setting lateness" in out.stderr and "use a number and one of" in out.stderr


def test_missing_redis_server_is_explained(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DevStackError) as err:
        DevStack(with_kafka=False).start()
    assert str(err.value) == REDIS_HELP and "apt-get install -y redis-server" in REDIS_HELP


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_demo_runs_the_whole_engine_shows_actions_and_cleans_up() -> None:
    out = engage("demo", "--seconds", "14", "--rate", "300", "--speed", "36000", timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "ACTION" in out.stdout and "cart_abandon_24h" in out.stdout
    assert "dead-lettered" in out.stdout and "profile of" in out.stdout
    assert "orders credited to them" in out.stdout
    ports = [int(line.rsplit(":", 1)[1].split("/")[0]) for line in out.stdout.splitlines()
             if line.startswith(("broker", "redis"))]
    assert len(ports) == 2 and not any(_port_open(p) for p in ports)


def test_a_new_deployment_can_take_over_state_and_continue_from_the_end(stack) -> None:
    first, doc = take_over_and_continue(stack, redis_client(stack))
    assert first["lifetime"] == {"product_view": 2, "login": 1}
    # 2 taken over + 1 new, none twice
    assert doc["lifetime"] == {"product_view": 3, "login": 1}
