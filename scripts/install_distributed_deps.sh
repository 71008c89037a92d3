#!/usr/bin/env bash
# Installs what `make test-distributed` needs on top of install_system_deps.sh: Redis, the Celery
# broker, from Debian's packages. The system service is left stopped: the test starts its own.
set -euo pipefail
source "$(dirname "$0")/apt_install_missing.sh"

command -v redis-server >/dev/null 2>&1 || apt_install_missing redis-server
