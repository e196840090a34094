"""engage: a real-time customer engagement engine for e-commerce.

Events flow one way: Kafka (``connectors``) -> parsing and event time
(``operators``) -> per-customer state (``state``) -> triggers (``rules``) ->
actions back to Kafka and state to Redis (``connectors``). ``flows`` wires
those steps into a Bytewax dataflow; ``monitoring`` holds every metric.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


def _load_compiled_runtime() -> None:
    """Make mypyc's runtime library importable in an editable install.

    setup.py compiles the hot modules with mypyc, which puts their shared
    runtime library at the top level next to the package. Installed from a
    wheel, that is site-packages, already on the path; in an editable
    install it is this folder, which is not, so it is loaded from here.
    """
    for lib in Path(__file__).resolve().parent.glob("*__mypyc.*"):
        name = lib.name.split(".", 1)[0]
        spec = importlib.util.spec_from_file_location(name, lib)
        if name in sys.modules or spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


_load_compiled_runtime()
