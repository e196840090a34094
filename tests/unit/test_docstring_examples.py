"""Every runnable example in a docstring is a test (as in river).

Examples are run from the source files: compiled modules (see setup.py)
keep their docstrings, but doctest cannot find examples in compiled code.
"""

from __future__ import annotations

import doctest
import sys
import importlib.util
from pathlib import Path

import pytest

import engage

ROOT = Path(engage.__path__[0])

MODULES = [
    "engage.events", "engage.config", "engage.operators.parse", "engage.operators.event_time",
    "engage.operators.routing", "engage.state.windows", "engage.state.customer",
    "engage.state.cart", "engage.state.keys", "engage.state.contact", "engage.state.profile",
    "engage.operators.ingest",
    "engage.rules.expr", "engage.rules.templates", "engage.rules.model", "engage.rules.policy",
    "engage.rules.context", "engage.rules.decide",
    "engage.simulator.storefront", "engage.connectors.kafka", "engage.cluster",
    "engage.benchmarks.scale", "engage.models.features", "engage.models.online",
    "engage.simulator.churners",
    "engage.attribution.ledger", "engage.attribution.stats", "engage.simulator.uplift",
    "engage.report",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    path = ROOT.joinpath(*name.split(".")[1:]).with_suffix(".py")
    spec = importlib.util.spec_from_file_location(f"doctest_of_{name.replace('.', '_')}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
