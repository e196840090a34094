#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite: unit tests, and
# integration tests against a real embedded broker and real redis-servers.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
exec python -m pytest "$@"
