"""The shards as Bytewax stateful steps.

A thin wrapper, kept out of the compiled modules: classes that extend
Bytewax's own do not survive compilation (see setup.py), the shard logic
they delegate to does, and runs a third faster for it.
"""

from __future__ import annotations

from typing import Any, Iterable

from bytewax.operators import StatefulBatchLogic

from engage.operators.shards import Bootstrap, CustomerShard, IdentityShard, ShardConfig


class ShardStep(StatefulBatchLogic):
    """Delegates every call of Bytewax's stateful-step protocol to a shard."""

    def __init__(self, shard: CustomerShard | IdentityShard) -> None:
        self.shard = shard

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        """Apply a batch; see the shard's own ``on_batch``."""
        return self.shard.on_batch(values)

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        """Input ended; see the shard's own ``on_eof``."""
        return self.shard.on_eof()

    def snapshot(self) -> bytes:
        """The shard's snapshot for Bytewax recovery."""
        return self.shard.snapshot()


def customer_step(cfg: ShardConfig, bootstrap: Bootstrap | None) -> Any:
    """Builder of the customer step (Bytewax calls it with each shard's resume state)."""
    return lambda resume: ShardStep(CustomerShard(cfg, resume, bootstrap))


def identity_step(cfg: ShardConfig, bootstrap: Bootstrap | None) -> Any:
    """Builder of the identity step."""
    return lambda resume: ShardStep(IdentityShard(cfg, resume, bootstrap))
