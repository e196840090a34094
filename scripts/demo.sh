#!/usr/bin/env bash
# Set up (first run only) and start the demo: embedded broker and Redis, a
# simulated storefront, the engine, and /metrics. Extra arguments go to
# `engage demo` (e.g. --seconds 30).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec engage demo "$@"
