#!/usr/bin/env bash
# Installs the system services the tests run for real (Dovecot, PostgreSQL) from Debian's
# packages when they are missing.
set -euo pipefail
source "$(dirname "$0")/apt_install_missing.sh"

need=()
command -v dovecot >/dev/null 2>&1 || need+=(dovecot-imapd)
[ -f /usr/share/dovecot/dh.pem ] || need+=(dovecot-core)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
apt_install_missing "${need[@]}"
