"""Every runnable example in a docstring is a test (as in river)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "engage.events", "engage.config", "engage.operators.parse", "engage.operators.event_time",
    "engage.operators.routing", "engage.state.windows", "engage.state.customer",
    "engage.state.cart", "engage.state.keys", "engage.rules.cart_abandon",
    "engage.simulator.storefront",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
