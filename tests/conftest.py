"""Shared fixtures: the tests' own helpers are importable as ``helpers``."""

from __future__ import annotations

import os
import sys

import pytest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# Tests of the spine (state, time, identity, restarts) run the cart reminder
# alone, without the catalog's caps, quiet hours and control group in the
# way; tests of rules name their own files. Engines started as subprocesses
# inherit this too.
os.environ.setdefault("ENGAGE_RULES", str(Path(__file__).parent / "rules" / "cart_only.yaml"))


def _stale_compiled_modules() -> list[str]:
    """Compiled (mypyc) modules older than their source: they would shadow the edit."""
    root = Path(__file__).resolve().parent.parent
    stale = []
    for so in root.glob("**/*.cpython-*.so"):
        if ".venv" in so.parts or "build" in so.parts:
            continue
        source = so.with_name(so.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > so.stat().st_mtime:
            stale.append(str(source.relative_to(root)))
    return stale


def pytest_configure(config: object) -> None:
    """Refuse to test stale compiled modules instead of testing old code."""
    stale = _stale_compiled_modules()
    if stale:
        pytest.exit("compiled modules are older than their sources "
                    f"({', '.join(stale)}): run ./scripts/test.sh, which rebuilds them, "
                    "or `.venv/bin/pip install -e .`", returncode=2)
