"""/metrics, /healthz and /readyz over real HTTP, with real Redis and Kafka behind readiness."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest

from engage.monitoring.server import OpsServer
from engage.runtime import load_rule_book, readiness_checks

from stack_helpers import produce, run_engine, settings_for
from helpers import T0, view


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_metrics_health_and_readiness(stack) -> None:
    produce(stack, [view(T0, user="c-1"), b"{broken"])
    run_engine(stack)
    server = OpsServer(0, readiness_checks(settings_for(stack)), host="127.0.0.1").start()
    try:
        status, body = get(server.port, "/metrics")
        text = body.decode()
        assert status == 200
        for name in ("engage_events_total{type=\"product_view\"}",
                     "engage_dead_letters_total{reason=\"invalid_json\"}",
                     "engage_state_write_seconds_bucket", "engage_batch_seconds_bucket",
                     "engage_records_read_total"):
            assert name in text, name
        assert get(server.port, "/healthz")[0] == 200
        status, body = get(server.port, "/readyz")
        assert status == 200 and orjson.loads(body)["checks"] == {"redis": "ok", "kafka": "ok",
                                                                   "rules": "ok"}

        # Redis goes away: not ready, and the reason names it.
        for proc in stack.procs:
            if "redis" in " ".join(proc.args):
                proc.terminate()
                proc.wait()
        server._cache = (0.0, 0, b"")  # skip the one-second cache
        status, body = get(server.port, "/readyz")
        doc = orjson.loads(body)
        assert status == 503 and doc["ready"] is False
        assert doc["checks"]["redis"].startswith("failing") and doc["checks"]["kafka"] == "ok"
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.stop()


def test_not_ready_until_the_rules_are_loaded(stack) -> None:
    """An engine still starting (rules not parsed yet) answers /healthz but not /readyz."""
    book: list[object] = []
    server = OpsServer(0, readiness_checks(settings_for(stack), lambda: book[-1] if book else None),
                       host="127.0.0.1").start()
    try:
        assert get(server.port, "/healthz")[0] == 200
        status, body = get(server.port, "/readyz")
        doc = orjson.loads(body)
        assert status == 503 and doc["checks"]["rules"] == "failing: RuntimeError: rules not loaded yet"
        assert doc["checks"]["redis"] == "ok" and doc["checks"]["kafka"] == "ok"
        book.append(load_rule_book(settings_for(stack)))
        server._cache = (0.0, 0, b"")  # skip the one-second cache
        assert get(server.port, "/readyz")[0] == 200
    finally:
        server.stop()


def test_a_broken_rule_file_gives_no_readiness(stack, tmp_path) -> None:
    """Readiness for a rule set that does not parse is refused outright, naming the file."""
    rules = tmp_path / "broken.yaml"
    rules.write_text("rules:\n  - id: x\n    trigger: {event: teleport}\n    action: {channel: sms}\n")
    with pytest.raises(ValueError, match="broken.yaml:3"):
        readiness_checks(settings_for(stack, rules=str(rules)))
