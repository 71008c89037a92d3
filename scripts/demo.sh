#!/usr/bin/env bash
# Entry point of `make demo` and `make demo-stop`: the integration running live on this machine.
#
#   bash scripts/demo.sh start            start everything under .demo/, wait until ready, print how to use it
#   bash scripts/demo.sh check [--wait S] exit 0 once ready and the store holds rows from both DAGs
#   bash scripts/demo.sh info             print the addresses and logins again
#   bash scripts/demo.sh stop             stop every process the demo started (safe to repeat)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=.venv/bin/python
if [ ! -x "$python" ]; then
  # Stopping needs only the standard library, so it works even after `make clean`.
  if [ "${1:-}" = stop ]; then
    python=python3
  else
    echo "demo: .venv is missing: run 'make demo' (it creates it) or 'make venv' first" >&2
    exit 1
  fi
fi
exec "$python" scripts/demo.py "$@"
