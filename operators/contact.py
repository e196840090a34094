"""The last word before anything is sent: the contact ledger's caps and conflict groups.

Decisions arrive from the customer shards already checked for conditions,
re-eligibility, control group, consent, quiet hours and arbitration. Here
the whole batch goes to the ledger in one call (Redis in production, memory
in replays); each decision leaves as an action on ``engage.actions`` or,
with its reason, as an audit record on ``engage.audit``. Nothing is dropped
silently. What reached the customer (and what the control group was held
out of) goes on to the attribution step as touches.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from engage.attribution.ledger import CONTROL, Touch
from engage.monitoring import metrics
from engage.operators.records import Decision, Emit, Forget, Order, Touched

ACTIONS_TOPIC = "engage.actions"
AUDIT_TOPIC = "engage.audit"


class Ledger(Protocol):
    """What the contact step needs of a ledger (see engage.state.contact)."""

    def decide(self, requests: list[Any]) -> list[str]:
        """Verdicts in order: send, cap or conflict."""
        ...


class ContactPolicy:
    """Turns a batch of decisions into actions and audit records."""

    def __init__(self, ledger: Ledger | Any, actions_topic: str = ACTIONS_TOPIC,
                 audit_topic: str = AUDIT_TOPIC) -> None:
        # ``ledger`` may be a zero-argument factory: each worker process then
        # opens its own connection on first use, never at flow-building time.
        self._ledger = ledger
        self.actions_topic = actions_topic
        self.audit_topic = audit_topic

    def ledger(self) -> Ledger:
        """The ledger, created on first use when given as a factory."""
        if not hasattr(self._ledger, "decide"):
            self._ledger = self._ledger()
        return self._ledger

    def __call__(self, outputs: list[tuple[str, Any]]) -> list[Any]:
        """One batch of the customer step's outputs in, Kafka messages and touches out.

        Messages the shards made themselves (profile changes) pass through, as
        do the orders and erasures the attribution step needs. Every action
        sent and every control-group decision also leaves as a
        :class:`Touched`, in the order the shard decided them among its
        orders: attribution must see them as they happened.
        """
        decisions = [x for _, x in outputs if type(x) is Decision]
        if not decisions:
            return [x for _, x in outputs if type(x) in _PASSED]
        checked = [d for d in decisions if d.request is not None and "reason" not in d.doc]
        verdicts = self.ledger().decide([d.request for d in checked]) if checked else []
        for d, verdict in zip(checked, verdicts):
            if verdict != "send":
                d.doc["reason"] = verdict
        out: list[Any] = []
        for _, x in outputs:
            kind = type(x)
            if kind is not Decision:
                if kind in _PASSED:
                    out.append(x)
                continue
            doc = x.doc
            key = str(doc["user_id"]).encode()
            reason = doc.get("reason")
            if reason is not None:
                metrics.ACTIONS_SUPPRESSED.labels(doc["rule_id"], reason).inc()
                out.append(Emit(self.audit_topic, key, orjson.dumps(doc)))
                if reason != CONTROL:
                    continue
            else:
                metrics.ACTIONS_SENT.labels(doc["rule_id"], doc["channel"]).inc()
                out.append(Emit(self.actions_topic, key, orjson.dumps(doc)))
            if x.window_ms > 0:
                out.append(Touched(doc["user_id"], Touch.from_decision(
                    doc, x.moment_ts, x.window_ms)))
        return out


#: What passes through this step untouched (StateWrites went to their own sink).
_PASSED = (Emit, Order, Forget)
