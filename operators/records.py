"""Small records that travel between the steps of the dataflow.

Each step's output is one of these (or an :class:`~engage.events.Event`), so a
reader of ``flows/engagement.py`` can follow what moves where.
"""

from __future__ import annotations

from typing import Any, NamedTuple


RawRecord = tuple[int, int, Any, Any]
"""``(partition, offset, key bytes, value bytes)`` as read from the input topic."""


class Tick(NamedTuple):
    """Event-time progress of one input partition: the largest ``ts`` read so far.

    ``via`` names the identity shard that passed it on (-1: straight from the
    source). Customer shards hear time only through the identity shards, so
    time never overtakes a device's events on their way to the customer.
    """

    partition: int
    max_ts: int
    via: int = -1


class Merge(NamedTuple):
    """A device's state, handed to the customer who logged in on it."""

    customer: str
    anonymous_id: str
    state: Any  # CustomerState; Any keeps this module free of state imports
    ts: int = 0  # event time of the login that linked the device
    partition: int = 0   # and where it was read from (orders merges of one moment)
    offset: int = 0


class StateWrites(NamedTuple):
    """One shard's Redis writes from one batch: set (bytes) or delete (None) per key.

    One record per shard and batch, not one per customer: fewer items
    travel through the dataflow, and the sink still writes one round trip.
    """

    writes: dict[str, bytes | None]
    watermark: int
    #: Customer -> every set it now belongs to (state.profile.memberships; "" for none).
    members: dict[str, str] | None = None


class Emit(NamedTuple):
    """A message for a Kafka topic (actions, audit, dead letters)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class Decision(NamedTuple):
    """A rule's decision for one customer, on its way to the contact ledger and out.

    ``doc`` is the action in the contract's format; with a ``reason`` it was
    refused before the ledger (cooldown, control, consent, quiet hours, ...)
    and goes to the audit topic. ``request`` is what the ledger checks (None
    for refused and for transactional decisions, which caps do not apply to).
    """

    doc: dict[str, Any]
    request: Any = None        # LedgerRequest
    priority: int = 0
    transactional: bool = False
    retried: bool = False      # already waited once after losing an arbitration
    trigger_ts: int = 0
    anchor: str = ""
    #: When, in event time, the decision was made (a deferral's end for a deferred one).
    moment_ts: int = 0
    #: The rule's attribution window; 0: not a touch (transactional, refused before sending).
    window_ms: int = 0


class Order(NamedTuple):
    """An ``order_paid`` or ``order_refunded`` a customer shard applied, for attribution.

    Leaves the customer shard in event-time order among the decisions it
    made, so the attribution step sees touches and orders as they happened.
    """

    kind: str          # order_paid or order_refunded
    user_id: str
    order_id: str
    ts: int
    amount: Any
    coupon: Any = None
    event_id: str = ""


class Touched(NamedTuple):
    """An action sent, or a control-group decision recorded: a touch to remember.

    ``touch`` is an :class:`engage.attribution.ledger.Touch`.
    """

    user_id: str
    touch: Any


class Forget(NamedTuple):
    """A request to erase a customer (``engage forget``), read from the control topic.

    Broadcast to every identity shard (devices linked to the customer live
    anywhere) and sent to the customer's shard. ``request_id`` names the
    request in logs and in the erasure record; it carries nothing of the
    customer.
    """

    customer: str
    request_id: str


class ModelCommand(NamedTuple):
    """``engage models reset|pin|unpin NAME``, read from the control topic.

    Broadcast to every customer shard: each holds its own replica of the models.
    """

    model: str       # churn_risk, repurchase_30d or all
    op: str          # reset, pin, unpin
    request_id: str
