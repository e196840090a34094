"""Integration fixtures: a real embedded broker and a real redis-server per test."""

from __future__ import annotations

from typing import Iterator

import pytest

from engage.connectors.devstack import DevStack


@pytest.fixture
def stack() -> Iterator[DevStack]:
    """A fresh broker (memory only) and redis-server on free ports, stopped afterwards."""
    with DevStack(event_partitions=3) as s:
        yield s
