#!/usr/bin/env bash
# Installs the system services the tests run for real (Dovecot, PostgreSQL) from Debian's
# packages when they are missing. The machines run as root; elsewhere, run it with sudo.
set -euo pipefail

need=()
command -v dovecot >/dev/null 2>&1 || need+=(dovecot-imapd)
[ -x /usr/share/dovecot/dh.pem ] || [ -f /usr/share/dovecot/dh.pem ] || need+=(dovecot-core)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v openssl >/dev/null 2>&1 || need+=(openssl)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "Installing from Debian's packages: ${need[*]}"
# Packages must not start system-wide daemons: the tests start their own on free ports.
export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
