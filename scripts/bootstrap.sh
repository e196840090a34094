#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: makes .venv with the engine and its dev
# extras, and makes sure a redis-server binary exists. Idempotent and quick
# when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "engage needs Python 3.10 or newer (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo ">> creating $VENV"
  "$PY" -m venv "$VENV"
fi

# Reinstall only when the dependency list or a compiled module's source
# changed (setup.py compiles the hot modules with mypyc; a stale compiled
# module would hide an edit to its .py file).
stamp="$VENV/.engage-installed"
want="$(cd "$ROOT" && cat pyproject.toml setup.py events.py state/*.py operators/*.py \
        | sha256sum | cut -d' ' -f1)"
stale=""
while IFS= read -r so; do
  src="${so%%.cpython-*}.py"
  if [ -f "$src" ] && [ "$src" -nt "$so" ]; then stale=1; fi
done < <(find "$ROOT" -name '*.cpython-*.so' -not -path "$VENV/*" -not -path "$ROOT/build/*")
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ -n "$stale" ]; then
  echo ">> installing engage and its dev extras into .venv (compiling the hot modules)"
  # The stamp goes first: an install that fails half-way (after the old
  # compiled modules were removed) must not look finished to the next run.
  rm -f "$stamp"
  # Compiled modules and their runtime library from an earlier build go first.
  find "$ROOT" \( -name '*.cpython-*.so' -o -name '*__mypyc.*' \) -not -path "$VENV/*" -delete
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[dev]"
  echo "$want" > "$stamp"
fi

if [ -z "${ENGAGE_REDIS_URL:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo ">> redis-server not found: installing Debian's redis-server package"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
    # The package may start a system instance on 6379; ours run on free ports.
  else
    cat >&2 <<'MSG'
redis-server was not found on PATH, and the engine needs a real Redis.
  Debian/Ubuntu: sudo apt-get install -y redis-server
  macOS:         brew install redis
  or point the engine at a running Redis: export ENGAGE_REDIS_URL=redis://host:6379/0
MSG
    exit 1
  fi
fi
# promtool (Debian's prometheus package) checks and unit-tests the alert rules
# under monitoring/prometheus. Optional: without it those tests skip, saying why.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = "0" ] \
    && command -v apt-get >/dev/null 2>&1; then
  echo ">> promtool not found: installing Debian's prometheus package (for the alert-rule tests)"
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends prometheus)) >/dev/null 2>&1 \
    || echo ">> could not install prometheus (promtool); its tests will be skipped" >&2
  # The package may start a system Prometheus; the tests only use promtool.
fi
export PATH="$VENV/bin:$PATH"
