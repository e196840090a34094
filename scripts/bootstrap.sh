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

# Reinstall only when the dependency list changed.
stamp="$VENV/.engage-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo ">> installing engage and its dev extras into .venv"
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
export PATH="$VENV/bin:$PATH"
