#!/bin/sh
# Starts Dovecot in the foreground with one account from DOVECOT_USER and DOVECOT_PASSWORD.
set -eu

: "${DOVECOT_USER:?set DOVECOT_USER (the IMAP login)}"
: "${DOVECOT_PASSWORD:?set DOVECOT_PASSWORD (the IMAP password)}"
conf="${DOVECOT_CONF:-/etc/dovecot/jira-mail.conf}"
users_file="${DOVECOT_USERS_FILE:-/etc/dovecot/users}"
cert_dir="${DOVECOT_CERT_DIR:-/etc/dovecot/tls}"
key_dir="${DOVECOT_KEY_DIR:-/etc/dovecot/private}"
tls_name="${DOVECOT_TLS_NAME:-dovecot}"

# passwd-file splits on ':' and lines on newlines; either in a login would corrupt the file.
case "$DOVECOT_USER" in
    *:* | *"
"*) echo "DOVECOT_USER must not contain ':' or a newline" >&2; exit 64 ;;
esac

# The key stays in the container; the certificate goes to the shared volume, so a recreated
# container replaces both together. Clients trust it through OpenSSL's hashed-directory lookup.
if [ ! -s "$key_dir/key.pem" ] || [ ! -s "$cert_dir/cert.pem" ]; then
    (
        umask 077
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
            -subj "/CN=$tls_name" -addext "subjectAltName=DNS:$tls_name,DNS:localhost" \
            -keyout "$key_dir/key.pem" -out "$cert_dir/cert.pem" 2>/dev/null
    )
    chmod 0644 "$cert_dir/cert.pem"
    find "$cert_dir" -maxdepth 1 -type l -name '*.0' -delete
    ln -s cert.pem "$cert_dir/$(openssl x509 -hash -noout -in "$cert_dir/cert.pem").0"
fi

# The password goes through stdin, never argv, and only its SHA512-crypt hash is written down.
hash="$(printf '%s' "$DOVECOT_PASSWORD" | openssl passwd -6 -stdin)"
(
    umask 027
    printf '%s:{SHA512-CRYPT}%s\n' "$DOVECOT_USER" "$hash" > "$users_file"
)
chgrp dovecot "$users_file"

# A master.pid left by a previous run of this container would make Dovecot refuse to start.
base_dir="$(doveconf -c "$conf" -h base_dir)"
rm -rf "${base_dir:?}"/*

exec dovecot -F -c "$conf"
