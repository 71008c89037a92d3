#!/usr/bin/env bash
# Installs the headless browser the UI test drives (tests/test_ui_browser.py): Debian's Chromium and
# the matching ChromeDriver. Browser downloads from other sites do not work on these machines, and
# Debian ships both at the same version. Runs as root, or with sudo elsewhere.
set -euo pipefail

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "Installing from Debian's packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
