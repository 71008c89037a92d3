#!/usr/bin/env bash
# Installs what `make test-distributed` needs on top of install_system_deps.sh: Redis, the Celery
# broker, from Debian's packages. The system service is left stopped: the test starts its own.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "Installing from Debian's packages: redis-server"
# RUNLEVEL=1 makes invoke-rc.d skip starting the packaged daemon; a policy-rc.d that denies every
# start covers images where invoke-rc.d ignores it, and is removed again unless it was there before.
export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
policy=/usr/sbin/policy-rc.d
added_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  added_policy=1
fi
cleanup() {
  if [ -n "$added_policy" ]; then
    $SUDO rm -f "$policy"
  fi
}
trap cleanup EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
