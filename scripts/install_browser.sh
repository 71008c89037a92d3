#!/usr/bin/env bash
# Installs the headless browser the UI test drives (tests/test_ui_browser.py): Debian's Chromium and
# the matching ChromeDriver. Browser downloads from other sites do not work on these machines, and
# Debian ships both at the same version.
set -euo pipefail
source "$(dirname "$0")/apt_install_missing.sh"

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
apt_install_missing "${need[@]}"
