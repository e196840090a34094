"""The last word before anything is sent: the contact ledger's caps and conflict groups.

Decisions arrive from the customer shards already checked for conditions,
re-eligibility, control group, consent, quiet hours and arbitration. Here
the whole batch goes to the ledger in one call (Redis in production, memory
in replays); each decision leaves as an action on ``engage.actions`` or,
with its reason, as an audit record on ``engage.audit``. Nothing is dropped
silently.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from engage.monitoring import metrics
from engage.operators.records import Decision, Emit

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

    def __call__(self, outputs: list[tuple[str, Any]]) -> list[Emit]:
        """One batch of the customer step's outputs in, Kafka messages out.

        Messages the shards made themselves (profile changes) pass through.
        """
        decisions = [x for _, x in outputs if type(x) is Decision]
        passed = [x for _, x in outputs if type(x) is Emit]
        if not decisions:
            return passed
        checked = [d for d in decisions if d.request is not None and "reason" not in d.doc]
        verdicts = self.ledger().decide([d.request for d in checked]) if checked else []
        for d, verdict in zip(checked, verdicts):
            if verdict != "send":
                d.doc["reason"] = verdict
        out: list[Emit] = passed
        for d in decisions:
            doc = d.doc
            key = str(doc["user_id"]).encode()
            if "reason" in doc:
                metrics.ACTIONS_SUPPRESSED.labels(doc["rule_id"], doc["reason"]).inc()
                out.append(Emit(self.audit_topic, key, orjson.dumps(doc)))
            else:
                metrics.ACTIONS_SENT.labels(doc["rule_id"], doc["channel"]).inc()
                out.append(Emit(self.actions_topic, key, orjson.dumps(doc)))
        return out
