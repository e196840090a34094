"""The shards as Bytewax stateful steps.

A thin wrapper, kept out of the compiled modules: classes that extend
Bytewax's own do not survive compilation (see setup.py), the shard logic
they delegate to does, and runs a third faster for it.

Items travel between the steps in bundles, one list per shard and batch
(see :data:`engage.operators.routing.Bundles`): the wrapper unpacks them
for the shard, and bundles what the identity step passes on to customers.
"""

from __future__ import annotations

from typing import Any, Iterable

from bytewax.operators import StatefulBatchLogic

from engage.events import Event
from engage.operators.attribution import AttributionShard
from engage.operators.records import Merge, Tick
from engage.operators.shards import Bootstrap, CustomerShard, IdentityShard, ShardConfig

_PASSED_ON = (Event, Merge, Tick)


class ShardStep(StatefulBatchLogic):
    """Delegates every call of Bytewax's stateful-step protocol to a shard."""

    def __init__(self, shard: CustomerShard | IdentityShard | AttributionShard) -> None:
        self.shard = shard

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        """Apply a batch of bundles; see the shard's own ``on_batch``."""
        items = values[0] if len(values) == 1 else [x for bundle in values for x in bundle]
        return self._out(self.shard.on_batch(items))

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        """Input ended; see the shard's own ``on_eof``."""
        return self._out(self.shard.on_eof())

    def snapshot(self) -> bytes:
        """The shard's snapshot for Bytewax recovery."""
        return self.shard.snapshot()

    def _out(self, result: tuple[Iterable[Any], bool]) -> tuple[Iterable[Any], bool]:
        return result


class IdentityStep(ShardStep):
    """The identity shard's step: what it passes on leaves as one bundle."""

    def _out(self, result: tuple[Iterable[Any], bool]) -> tuple[Iterable[Any], bool]:
        items, retain = result
        out: list[Any] = []
        passed_on: list[Any] = []
        for x in items:
            (passed_on if type(x) in _PASSED_ON else out).append(x)
        if passed_on:
            out.append(passed_on)
        return out, retain


def customer_step(cfg: ShardConfig, bootstrap: Bootstrap | None) -> Any:
    """Builder of the customer step (Bytewax calls it with each shard's resume state)."""
    return lambda resume: ShardStep(CustomerShard(cfg, resume, bootstrap))


def identity_step(cfg: ShardConfig, bootstrap: Bootstrap | None) -> Any:
    """Builder of the identity step."""
    return lambda resume: IdentityStep(IdentityShard(cfg, resume, bootstrap))


def attribution_step(grace_ms: int) -> Any:
    """Builder of the attribution step; ``grace_ms`` is the allowed lateness."""
    return lambda resume: ShardStep(AttributionShard(grace_ms, resume))
