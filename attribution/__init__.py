"""Closing the loop: which orders the engine's messages (and their control groups) caused.

:mod:`engage.attribution.ledger` keeps, per customer, the touches (actions
sent, control-group decisions) and the orders credited to them, as plain
JSON data held by the attribution step (:mod:`engage.operators.attribution`);
:mod:`engage.attribution.stats` turns counts into rates, intervals and
verdicts. Both are pure: no I/O, no wall clock.
"""
