#!/usr/bin/env bash
# Unpacks Debian's Courier IMAP (and the libraries it needs that are not installed) into a cache
# directory, for devkit/courier.py, which runs it from there inside its own mount namespace.
#
# Nothing is installed: `courier-imap` conflicts with `dovecot-imapd` (both provide imap-server),
# and `apt-get install` would remove Dovecot. The .debs come from `apt-get download` and are
# unpacked with `dpkg -x`; dpkg's database and every path outside the cache stay as they are.
#
# Prints the unpacked root on stdout. Quick (no apt, no network) once the cache is complete.
# Cache: $JMS_COURIER_CACHE, else /var/cache/jira-mail-sync/courier as root, else
# ${XDG_CACHE_HOME:-~/.cache}/jira-mail-sync/courier.
set -euo pipefail

# gamin (gam_server, a courier-imap Depends) serves imapd's FAM watches; without it every login
# and every APPEND waits ~1.2 s for a server that never comes.
PACKAGES=(courier-imap courier-base courier-authlib courier-authdaemon courier-authlib-userdb gamin)
# Files devkit/courier.py runs; the cache counts as complete only when all are there.
REQUIRED=(
  usr/bin/imapd
  usr/sbin/couriertcpd
  usr/lib/courier/courier/imaplogin
  usr/lib/courier/courier-authlib/authdaemond
  usr/lib/courier/courier-authlib/makedatprog
  usr/lib/courier-authlib/libauthuserdb.so.0
  usr/libexec/gam_server
)
STAMP_VERSION=2

if [ -n "${JMS_COURIER_CACHE:-}" ]; then
  cache=$JMS_COURIER_CACHE
elif [ "$(id -u)" = 0 ]; then
  cache=/var/cache/jira-mail-sync/courier
else
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/jira-mail-sync/courier
fi
root=$cache/root
stamp=$cache/complete

complete() {
  [ "$(cat "$stamp" 2>/dev/null)" = "$STAMP_VERSION" ] || return 1
  local f
  for f in "${REQUIRED[@]}"; do [ -e "$root/$f" ] || return 1; done
}

if complete; then
  echo "$root"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
if complete; then # another process finished while this one waited for the lock
  echo "$root"
  exit 0
fi

log() { echo "install_courier: $*" >&2; }

sudo=
[ "$(id -u)" = 0 ] || sudo=sudo
if ! apt-cache show courier-imap >/dev/null 2>&1; then
  log "apt-get update (no package lists know courier-imap yet)"
  $sudo apt-get update -qq >&2
fi

work=$(mktemp -d "$cache/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/debs" "$work/root"
# _apt cannot write into a root-only directory; apt then downloads as root and says so on stderr.
chmod 755 "$work" "$work/debs"

download() { # download PACKAGE...: fetch the .debs into $work/debs
  (cd "$work/debs" && apt-get download -q "$@" 2>&1 | grep -v -e '^Get:' -e 'unsandboxed' >&2 || true)
  local p
  for p in "$@"; do
    compgen -G "$work/debs/${p}_*.deb" >/dev/null || {
      log "apt-get download $p failed"
      exit 1
    }
  done
}

log "downloading ${PACKAGES[*]}"
download "${PACKAGES[@]}"

# Shared libraries from Depends (first alternative that is installed, else the first one) that
# dpkg does not have installed are unpacked alongside, round by round until none is missing;
# tools (perl, debconf, adduser, an MTA) are not needed to run imapd from the cache.
declare -A installed=() seen=()
while IFS=$'\t' read -r name status; do
  [ "$status" != installed ] || installed[$name]=1
done < <(dpkg-query -W -f='${Package}\t${db:Status-Status}\n')
for p in "${PACKAGES[@]}"; do seen[$p]=1; done
round=("$work"/debs/*.deb)
while [ "${#round[@]}" -gt 0 ]; do
  missing=()
  depends=$(for deb in "${round[@]}"; do dpkg-deb -f "$deb" Depends Pre-Depends; done |
    sed 's/^[A-Za-z-]*: //' | tr '\n' ',')
  IFS=',' read -ra clauses <<<"$depends"
  for clause in "${clauses[@]}"; do
    choice=
    IFS='|' read -ra alternatives <<<"$clause"
    for alt in "${alternatives[@]}"; do
      name=${alt%%(*}
      name=${name//:any/}
      name=${name//[[:space:]]/}
      [ -n "$name" ] || continue
      [ -n "$choice" ] || choice=$name
      if [ -n "${installed[$name]:-}" ] || [ -n "${seen[$name]:-}" ]; then
        choice=
        break
      fi
    done
    case "$choice" in
    lib*)
      seen[$choice]=1
      missing+=("$choice")
      ;;
    esac
  done
  round=()
  if [ "${#missing[@]}" -gt 0 ]; then
    log "downloading libraries that are not installed: ${missing[*]}"
    download "${missing[@]}"
    for p in "${missing[@]}"; do round+=("$work"/debs/"${p}"_*.deb); done
  fi
done

for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$work/root"
done
for f in "${REQUIRED[@]}"; do
  [ -e "$work/root/$f" ] || {
    log "$f is missing from the unpacked packages"
    exit 1
  }
done

# Every ELF file must resolve its libraries from the host plus the cache's own library dirs.
r=$work/root
libpath=$r/usr/lib
for d in "$r"/usr/lib/*-linux-gnu* "$r"/lib/*-linux-gnu*; do
  [ ! -d "$d" ] || libpath=$libpath:$d
done
for f in "${REQUIRED[@]}" usr/lib/courier-authlib/libauthuserdb.so.0.0.0; do
  if LD_LIBRARY_PATH=$libpath ldd "$r/$f" 2>&1 | grep -q 'not found'; then
    log "$f has unresolved libraries:"
    LD_LIBRARY_PATH=$libpath ldd "$r/$f" | grep 'not found' >&2
    exit 1
  fi
done

# Swap the new tree in (the old one, if any, was incomplete).
rm -rf "$root" "$cache/debs"
mv "$work/root" "$root"
mv "$work/debs" "$cache/debs"
echo "$STAMP_VERSION" >"$stamp"
log "unpacked $(ls "$cache/debs" | wc -l) packages into $root"
echo "$root"
