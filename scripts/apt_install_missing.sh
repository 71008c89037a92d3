# Sourced by the install_*.sh scripts: installs Debian packages without starting their daemons
# (the tests and the demo start their own on free ports). Runs as root, or with sudo elsewhere.

# apt_install_missing PACKAGE...: install the named packages; does nothing when none are named.
apt_install_missing() {
  [ "$#" -gt 0 ] || return 0
  local sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "Installing from Debian's packages: $*"
  # RUNLEVEL=1 makes invoke-rc.d skip starting packaged daemons; a policy-rc.d that denies every
  # start covers images where invoke-rc.d ignores it, and is removed again unless it was there before.
  local policy=/usr/sbin/policy-rc.d added_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    added_policy=1
  fi
  local status=0
  local apt=($sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get)
  "${apt[@]}" update -qq || status=$?
  if [ "$status" = 0 ]; then
    "${apt[@]}" install -y -qq --no-install-recommends "$@" >/dev/null || status=$?
  fi
  [ -z "$added_policy" ] || $sudo rm -f "$policy"
  return "$status"
}
