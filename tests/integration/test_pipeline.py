"""Events in through the real broker, state in the real Redis, actions and dead letters out."""

from __future__ import annotations

import orjson

from engage import cli
from engage.connectors.kafka import ACTIONS_TOPIC, DLQ_TOPIC, EVENTS_TOPIC, produce_all, read_topic
from engage.connectors.redis_store import make_loader, read_customer, read_document, recode
from engage.monitoring import metrics
from engage.state.codec import decode, is_compressed
from engage.state.keys import link_key, state_key

from stack_helpers import produce, redis_client, run_engine, topic_docs
from helpers import DAY, HOUR, MIN, T0, add, counters, doc, login, paid, view


def test_state_actions_and_identity_end_to_end(stack) -> None:
    produce(stack, [
        view(T0, anon="d-1"), add(T0 + MIN, anon="d-1", event_id="e-cart"),
        login(T0 + 2 * MIN, "c-1", "d-1"),
        view(T0 + 3 * MIN, anon="d-1", category="lamp"),
        add(T0, user="c-2"), paid(T0 + HOUR, "c-2", "o-1", 499.0),
        view(T0 + 30 * HOUR, user="c-3"),
    ])
    run_engine(stack)
    r = redis_client(stack)
    c1 = read_document(r, state_key("c-1"))
    assert c1["lifetime"] == {"product_view": 2, "add_to_cart": 1, "login": 1}
    assert c1["anon_ids"] == ["d-1"]
    assert r.get(link_key("d-1")) == b"c-1"
    assert r.get(state_key("~d-1")) is None
    assert r.ttl(state_key("c-1")) > 300 * 86400  # inactive customers expire
    c2 = read_document(r, state_key("c-2"))
    assert c2["orders"]["count"] == 1 and c2["orders"]["spend"] == 499.0
    [action] = topic_docs(stack, ACTIONS_TOPIC)
    assert action["user_id"] == "c-1" and action["trigger_event_ids"] == ["e-cart"]
    [msg] = [m for m in read_topic(stack.bootstrap, ACTIONS_TOPIC)]
    assert msg.key() == b"c-1"


def test_every_reason_code_reaches_the_dead_letter_topic_with_the_original_bytes(stack) -> None:
    bad = {
        b"{not json": "invalid_json",
        b"[1,2]": "not_an_object",
        orjson.dumps(doc("search", T0, "c-1")): "missing_field",  # no query
        orjson.dumps({**doc("search", T0, "c-1", query="x"), "event_id": 5}): "wrong_type",
        orjson.dumps(doc("teleport", T0, "c-1")): "unknown_type",
        orjson.dumps({**doc("search", T0, "c-1", query="x"), "ts": "soon"}): "bad_timestamp",
        orjson.dumps(doc("search", 4_000_000_000_000, "c-1", query="x")): "future_timestamp",
        orjson.dumps(doc("order_paid", T0, "c-1", order_id="o", amount=-3)): "negative_amount",
        orjson.dumps(doc("consent_update", T0, "c-1", channel="fax", granted=True)): "invalid_value",
    }
    before = {reason: metrics.DEAD_LETTERS.labels(reason)._value.get() for reason in bad.values()}
    produce(stack, list(bad) + [view(T0, user="c-ok")])
    run_engine(stack)
    dead = read_topic(stack.bootstrap, DLQ_TOPIC)
    got = {m.value(): dict(m.headers())["engage.reason"].decode() for m in dead}
    assert got == {value: reason for value, reason in bad.items()}
    for m in dead:
        headers = dict(m.headers())
        assert headers["engage.detail"] and headers["engage.source"].startswith(b"engage.events/")
    for reason in bad.values():
        assert metrics.DEAD_LETTERS.labels(reason)._value.get() - before[reason] >= 1
    # ...and the flow went on: the valid event after them was processed.
    assert redis_client(stack).get(state_key("c-ok")) is not None


def test_late_events_within_lateness_land_in_their_window_later_ones_in_lifetime_only(stack) -> None:
    before = metrics.LATE_EVENTS._value.get()
    produce(stack, [
        view(T0 + 10 * DAY, user="c-1"),
        view(T0 + 10 * DAY - 3 * MIN, user="c-1", category="lamp"),   # within 5 min lateness
        view(T0 + 2 * DAY, user="c-1", category="rug"),                # 8 days late
    ])
    run_engine(stack, event_partitions=1)
    c1 = read_document(redis_client(stack), state_key("c-1"))
    assert c1["lifetime"]["product_view"] == 3 and c1["late"] == 1
    assert "product_view|lamp" in counters(c1) and "product_view|rug" not in counters(c1)
    assert metrics.LATE_EVENTS._value.get() - before == 1


def test_a_shared_device_is_not_merged_into_more_customers_than_allowed(stack) -> None:
    before = metrics.IDENTITY_LINKS.labels("refused")._value.get()
    # One key, so one partition: the logins arrive in the order they happened.
    produce_all(stack.bootstrap, EVENTS_TOPIC, [
        (b"kiosk", orjson.dumps(e)) for e in
        [view(T0, anon="kiosk")] + [login(T0 + (i + 1) * MIN, f"c-{i}", "kiosk") for i in range(4)]])
    run_engine(stack, max_links_per_device=2)
    r = redis_client(stack)
    assert metrics.IDENTITY_LINKS.labels("refused")._value.get() - before == 2
    assert r.get(link_key("kiosk")) == b"c-1"
    linked = [read_document(r, state_key(f"c-{i}")) for i in range(4)]
    assert [d.get("anon_ids", []) for d in linked] == [["kiosk"], ["kiosk"], [], []]
    assert linked[0]["lifetime"] == {"product_view": 1, "login": 1}  # the device's view went once


def test_documents_are_stored_compressed_and_read_back_whichever_codec_wrote_them(stack) -> None:
    produce(stack, [view(T0, user="c-z", category="sofa")])
    run_engine(stack, state_codec="json")
    r = redis_client(stack)
    plain = r.get(state_key("c-z"))
    assert plain.startswith(b"{") and orjson.loads(plain)["lifetime"] == {"product_view": 1}
    produce(stack, [view(T0 + HOUR, user="c-z", category="sofa")])
    run_engine(stack)   # the default codec: zstd with the shipped dictionary
    stored = r.get(state_key("c-z"))
    assert is_compressed(stored) and len(stored) < len(plain)
    assert read_document(r, state_key("c-z"))["lifetime"] == {"product_view": 2}
    assert read_customer(r, "c-z")[1]["lifetime"] == {"product_view": 2}
    # A takeover reads either: the loader hands the shards JSON.
    r.set(state_key("c-json"), plain)
    assert make_loader(stack.redis_url)([state_key("c-z"), state_key("c-json"),
                                         link_key("none")]) == [decode(stored), plain, None]


def test_recode_state_rewrites_every_document_in_place_and_keeps_its_ttl(stack) -> None:
    produce(stack, [view(T0, user="c-r1"), view(T0, anon="d-r2"), login(T0 + MIN, "c-r1", "d-r3")])
    run_engine(stack)
    r = redis_client(stack)
    keys = [state_key("c-r1"), state_key("~d-r2")]
    before = {k: read_document(r, k) for k in keys}
    assert all(is_compressed(r.get(k)) for k in keys)
    assert cli.main(["recode-state", "--codec", "json", "--redis-url", stack.redis_url]) == 0
    for k in keys:
        raw = r.get(k)
        assert raw.startswith(b"{") and orjson.loads(raw) == before[k]
        assert r.ttl(k) > 300 * 86400   # the TTL is kept
    # Idempotent, and back again.
    assert recode(r, "json")["rewritten"] == 0
    assert recode(r, "zstd")["rewritten"] >= len(keys)
    assert all(is_compressed(r.get(k)) and read_document(r, k) == before[k] for k in keys)
