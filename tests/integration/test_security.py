"""Kafka client settings and Redis AUTH pass through to every connection; no secret shows.

The embedded broker speaks plaintext only, so SASL/SSL themselves cannot be
exercised here; what is proven is the path they take: a ``client.id`` given
in ENGAGE_KAFKA_CONFIG names every Kafka client the engine opens (consumers,
producers, admin clients) in librdkafka's own log, so a SASL or SSL setting
given the same way reaches each of them too.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import redis

from engage.connectors.kafka import ACTIONS_TOPIC

from engine_process import EngineProcess, until
from helpers import doc, view
from stack_helpers import produce, topic_docs

pytestmark = pytest.mark.integration

OPS_RULES = str(Path(__file__).parent.parent / "rules" / "ops_live.yaml")
REDIS_PW = "redis-pw-0x61"
SASL_PW = "sasl-pw-0x62"
KEY_PW = "ssl-key-pw-0x63"


def test_kafka_settings_reach_every_client_and_redis_auth_works_without_leaking(stack) -> None:
    admin = redis.Redis.from_url(stack.redis_url)
    admin.config_set("requirepass", REDIS_PW)
    url = stack.redis_url.replace("redis://", f"redis://:{REDIS_PW}@")
    # Settings librdkafka accepts on a plaintext connection: the passwords are
    # carried (unused) like any SASL/SSL setting; debug=broker makes every
    # client log its name as it connects.
    kafka_config = (f"client.id=engage-probe,debug=broker,sasl.username=engage,"
                    f"sasl.password={SASL_PW},ssl.key.password={KEY_PW}")
    now = int(time.time() * 1000)
    with EngineProcess({"ENGAGE_KAFKA_BOOTSTRAP": stack.bootstrap, "ENGAGE_REDIS_URL": url,
                        "ENGAGE_KAFKA_CONFIG": kafka_config, "ENGAGE_RULES": OPS_RULES,
                        "ENGAGE_LATENESS": "1s"}) as engine:
        until(lambda: engine.get("/readyz")[0] == 200 or not engine.alive(), "readiness")
        ready = engine.get("/readyz")
        assert ready[0] == 200, engine.log()[-3000:]
        produce(stack, [doc("search", now - 60_000, "c-sec", query="sofa")]
                + [view(now - 1_000 + i, f"clock-{i}") for i in range(12)])
        # The search is answered: Redis (with AUTH) and the contact ledger were used.
        until(lambda: any(a["user_id"] == "c-sec" for a in topic_docs(stack, ACTIONS_TOPIC)),
              "the action")
        scraped = engine.metrics() + ready[1].decode()
    assert engine.returncode == 0, engine.log()[-3000:]
    client = redis.Redis.from_url(url)
    assert client.exists("engage:c:{c-sec}")

    log = engine.log()
    # Every Kafka client carries the pass-through client.id; none runs on the default one.
    names = set(re.findall(r"\|(engage-probe#(?:producer|consumer)-\d+)\|", log))
    assert any("#consumer-" in n for n in names) and any("#producer-" in n for n in names), names
    assert "|rdkafka#" not in log, [ln for ln in log.splitlines() if "|rdkafka#" in ln][:3]
    # And no secret in the log, /metrics or /readyz.
    for secret in (REDIS_PW, SASL_PW, KEY_PW):
        assert secret not in log and secret not in scraped, secret
    assert "starting engine with" in log and "redis://:***@127.0.0.1" in log
