"""Build hook: compile the hot pure-logic modules with mypyc when possible.

Parsing, windows, carts and customer state run once or more per event; as
C extensions they run about a third faster (see benchmarks/RESULTS.md). The
same modules stay importable as plain Python: set ENGAGE_PURE_PYTHON=1, or
build where mypy or a C compiler is missing, and nothing is compiled.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

ROOT = Path(__file__).resolve().parent

#: Modules compiled, as paths inside the package (the repository root is `engage`).
#: Pure logic only, and no class that extends a Bytewax class (the shards
#: are wrapped for Bytewax in operators/steps.py for that reason): compiled
#: code frees locals after their last use (which broke a Kafka admin
#: client's pending futures when connectors were compiled), and subclasses
#: of Bytewax's typing protocols crash isinstance() when the build cannot
#: see Bytewax. Neither is where the time goes.
COMPILED = [
    "events.py",
    "state/windows.py",
    "state/cart.py",
    "state/customer.py",
    "operators/parse.py",
    "operators/event_time.py",
    "operators/routing.py",
    "operators/shards.py",
]


def compiled_extensions() -> list:
    """mypyc extensions for COMPILED, or none when compiling is off or impossible."""
    if os.environ.get("ENGAGE_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("engage: mypy not available, installing pure Python", file=sys.stderr)
        return []
    # mypyc names modules after their folders; the package's folder is the
    # repository root, so it is presented to mypyc under its import name.
    tree = ROOT / "build" / "mypyc-src"
    tree.mkdir(parents=True, exist_ok=True)
    link = tree / "engage"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    here = os.getcwd()
    os.chdir(tree)
    try:
        # The build runs before the dependencies are installed: their types
        # are unknown to mypy then, which compiled code treats as Any.
        return mypycify(["--ignore-missing-imports"] + [f"engage/{path}" for path in COMPILED],
                        opt_level="3",
                        target_dir=str(ROOT / "build" / "mypyc"))
    except SystemExit as exc:
        # mypy is pinned, so a type error here is a bug in our code: falling
        # back silently would ship a build a third slower that nobody notices.
        raise SystemExit(f"engage: mypyc found type errors (above) in the compiled modules "
                         f"(exit {exc.code}); fix them, or set ENGAGE_PURE_PYTHON=1") from None
    finally:
        os.chdir(here)


class OptionalBuildExt(build_ext):
    """Builds the compiled modules, or leaves them out where no C compiler works."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, BaseError, OSError) as exc:
            print(f"engage: could not compile the hot modules ({exc}); installing pure Python",
                  file=sys.stderr)
            self.extensions = []


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
