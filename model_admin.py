"""``engage models``: what the running engine's models know, and commands to reset or pin them.

Each customer shard learns its own replica of the two models and writes a
summary to Redis (``engage:model:<shard>``) every few seconds; this merges
them: labels and learning counts add up, and the progressive validations
merge exactly (see :class:`~engage.models.online.Validation`).

Commands travel like erasure requests: a message on ``engage.control`` that
every customer shard acts on (and that a restarted engine reads again), so a
reset or a pin takes effect in every replica, in every process.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from engage.config import Settings
from engage.models.keeper import MODEL_NAMES
from engage.models.online import merged
from engage.state.keys import MODEL_PATTERN

OPS = ("reset", "pin", "unpin")


def status(settings: Settings) -> dict[str, Any]:
    """Per model: versions, labels, positives, learned, pinned, AUC, log loss,
    baseline AUC, shards reporting; empty when no engine has written any."""
    from engage.connectors.redis_store import connect, mget  # noqa: PLC0415

    if not settings.redis_url:
        raise ValueError("ENGAGE_REDIS_URL (or --redis-url) must be set: the models' summaries "
                         "are read from Redis")
    client = connect(settings.redis_url)
    keys = sorted(client.scan_iter(MODEL_PATTERN))
    # The summaries lie in different slots: mget reads a cluster slot by slot.
    summaries = [orjson.loads(v) for v in mget(client, keys) if v is not None]
    out: dict[str, Any] = {}
    for name in MODEL_NAMES:
        mine = [s[name] for s in summaries if name in s]
        if mine:
            out[name] = merged(mine)
            out[name]["horizon_days"] = mine[0]["horizon_ms"] / 86_400_000
    return out


def render(view: dict[str, Any]) -> str:
    """The status as a few lines of text."""
    if not view:
        return "no model summaries in Redis yet (is the engine running with ENGAGE_MODELS on?)"
    lines = []
    for name, m in view.items():
        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.4f}"
        lines.append(
            f"{name:<15} {', '.join(m['versions'])}{'  PINNED' if m['pinned'] else ''}\n"
            f"  horizon {m['horizon_days']:g} d; {m['labels']:,} labels ({m['positives']:,} positive), "
            f"learnt from {m['learned']:,}; {m['shards']} shard replica(s)\n"
            f"  progressive ROC AUC {f(m['auc'])} (recency baseline {f(m['baseline_auc'])}), "
            f"log loss {f(m['log_loss'])}")
    return "\n".join(lines)


def command(settings: Settings, model: str, op: str) -> str:
    """Send ``op`` (reset, pin, unpin) for ``model`` (a name or ``all``) to the engine;
    returns the request id."""
    from engage.connectors.kafka import CONTROL_TOPIC, ensure_topics, produce_all  # noqa: PLC0415

    if op not in OPS:
        raise ValueError(f"unknown operation {op!r} (known: {', '.join(OPS)})")
    if model != "all" and model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r} (known: {', '.join(MODEL_NAMES)}, all)")
    if not settings.kafka_bootstrap:
        raise ValueError("ENGAGE_KAFKA_BOOTSTRAP (or --kafka-bootstrap) must be set: the command "
                         "goes to the running engine through engage.control")
    request_id = f"model-{op}-" + uuid.uuid4().hex[:12]
    ensure_topics(settings.kafka_bootstrap, {CONTROL_TOPIC: 1}, settings.kafka_config)
    produce_all(settings.kafka_bootstrap, CONTROL_TOPIC, [(
        None, orjson.dumps({"model": model, "op": op, "request_id": request_id}))],
        settings.kafka_config)
    return request_id
