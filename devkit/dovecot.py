"""Dovecot launcher: a real IMAP/IMAPS server on loopback from a generated config, with throw-away accounts.

The test fixtures (tests/harness/dovecot.py), the demo, the distributed stack and the benchmarks all
start Dovecot through `start_dovecot`. With `oauth2_introspection_url` it also accepts SASL XOAUTH2
and OAUTHBEARER, checking every token at that RFC 7662 endpoint (its `oauth2` passdb), while
password logins keep going to the passwd-file passdb.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import imaplib
import ipaddress
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from devkit.imap_account import HelperSessionAccount
from devkit.processes import LOOPBACK, free_port, log_tail, spawn, stop_process_group

DOVECOT_BINARY = "/usr/sbin/dovecot"
# `openssl dhparam` takes minutes; Debian ships ready-made parameters.
DH_PARAMS = Path("/usr/share/dovecot/dh.pem")
# ext4 refuses a 65,001st hard link to one file (EMLINK).
LINKS_PER_FILE = 60_000
START_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 30.0
OAUTH2_ARGS_NAME = "dovecot-oauth2.conf.ext"

_STATUS_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")


class DovecotStartError(RuntimeError):
    """Dovecot did not come up; the message carries its stderr and log tail."""


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def write_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for localhost/127.0.0.1 signed by it (EC keys: a few ms)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jira-mail-sync test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.touch(mode=0o600)
    files.server_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(files.ca_cert, 0o644)
    return files


def oauth2_args(introspection_url: str) -> str:
    """The oauth2 passdb's `args` file: every token is introspected, and `username` must be the login.

    Settings as checked on Dovecot 2.3.19 (FACTS.md); `force_introspection` makes even a token Dovecot
    has seen before go to the endpoint, so an expired or revoked one is refused at once.
    """
    return f"""\
# Written by devkit/dovecot.py; tokens are checked at an RFC 7662 introspection endpoint.
introspection_url = {introspection_url}
introspection_mode = post
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
"""


def _oauth2_passdb(args_path: Path) -> str:
    # Only for the token mechanisms, so PLAIN/LOGIN still reach the passwd-file passdb after it.
    return f"""\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {args_path}
}}
"""


def _render_config(
    root: Path,
    tls: TlsFiles,
    port: int,
    ssl_port: int,
    mail_uid: int,
    mail_gid: int,
    rootless: bool,
    oauth2_args_path: Path | None = None,
) -> str:
    # Rootless Dovecot cannot chroot or switch users, so every service runs as the invoking user.
    if rootless:
        me, my_group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        identity = (
            f"default_login_user = {me}\ndefault_internal_user = {me}\ndefault_internal_group = {my_group}\n"
        )
        no_chroot = "  chroot =\n"
    else:
        identity, no_chroot = "", ""
    mechanisms = "plain login" + (" xoauth2 oauthbearer" if oauth2_args_path else "")
    oauth2_passdb = _oauth2_passdb(oauth2_args_path) if oauth2_args_path else ""
    return f"""\
# Written by devkit/dovecot.py for one test session or demo; nothing here is meant for production.
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
{identity}protocols = imap
listen = {LOOPBACK}
ssl = yes
ssl_cert = <{tls.server_cert}
ssl_key = <{tls.server_key}
ssl_dh = <{DH_PARAMS}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_verbose = yes
# auth_failure_delay = 0 alone still answers a failed login only on a 500 ms timer tick in 2.3.19;
# a `nodelay` field from a passdb makes the failure immediate (see the first passdb below).
auth_failure_delay = 0
first_valid_uid = {mail_uid}
first_valid_gid = {mail_gid}
mail_location = maildir:~/Maildir
mail_fsync = never
protocol imap {{
  mail_max_userip_connections = 100
}}
# Adds `nodelay` to every request and authenticates nobody; result_success = continue hands the
# request on to the real passdb.
passdb {{
  driver = static
  args = noauthenticate nodelay=y
  result_success = continue
}}
{oauth2_passdb}# One file per user: Dovecot re-reads a shared passwd-file at most once per second, which would
# make a user created within the same second as an earlier login unknown.
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users/%u
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={root}/mail/%u
}}
service imap-login {{
{no_chroot}  inet_listener imap {{
    address = {LOOPBACK}
    port = {port}
  }}
  inet_listener imaps {{
    address = {LOOPBACK}
    port = {ssl_port}
    ssl = yes
  }}
}}
service anvil {{
{no_chroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


def _read_greeting(port: int, ssl_context: ssl.SSLContext | None) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=2.0) as raw:
        if ssl_context is None:
            return raw.makefile("rb").readline()
        with ssl_context.wrap_socket(raw, server_hostname=LOOPBACK) as tls:
            return tls.makefile("rb").readline()


@dataclass
class DovecotServer:
    """A running Dovecot; `stop()` ends its whole process group and removes the directory it made."""

    root: Path
    host: str
    port: int
    ssl_port: int
    ca_cert: Path
    mail_uid: int
    mail_gid: int
    process: subprocess.Popen[bytes]
    output_path: Path
    owns_root: bool = True
    oauth2_introspection_url: str | None = None
    _account_numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    @property
    def users_dir(self) -> Path:
        return self.root / "users"

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    def log_tail(self, max_lines: int = 40) -> str:
        """The end of Dovecot's own output (start-up errors) and of its log."""
        return f"{log_tail(self.output_path, max_lines)}\n{log_tail(self.log_path, max_lines)}"

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this server's CA."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def create_account(self) -> ImapAccount:
        """A user nobody has logged in as before, with an empty Maildir."""
        user = f"u{next(self._account_numbers):04d}{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(18)
        home = self.mail_root / user
        maildir = home / "Maildir"
        for directory in (home, maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
            directory.mkdir(mode=0o700)
            os.chown(directory, self.mail_uid, self.mail_gid)
        self.set_password(user, password)
        return ImapAccount(
            host=self.host,
            port=self.port,
            ssl_port=self.ssl_port,
            ca_cert=str(self.ca_cert),
            user=user,
            password=password,
            maildir=maildir,
            _server=self,
        )

    def set_password(self, user: str, password: str) -> None:
        """Give `user` this password (a new user, or a changed password: the next login must use it)."""
        passwd_file = self.users_dir / user
        # Written under a temporary name and renamed, so the auth process never reads half a line.
        staging = self.users_dir / f".{user}.tmp"
        staging.write_text(f"{user}:{{PLAIN}}{password}::::::\n")
        os.chmod(staging, 0o600)
        os.chown(staging, self.mail_uid, self.mail_gid)
        staging.rename(passwd_file)

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Stop Dovecot (every session ends) and start it again: same ports, config, accounts and mail."""
        stop_process_group(self.process)
        # A stale base_dir (master.pid, sockets) would stop the new master from starting.
        shutil.rmtree(self.root / "run", ignore_errors=True)
        self.process = spawn([DOVECOT_BINARY, "-c", str(self.root / "dovecot.conf"), "-F"], self.output_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if _read_greeting(self.port, None).startswith(b"* OK"):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise DovecotStartError(f"Dovecot did not come back after a restart\n{self.log_tail()}")

    def stop(self) -> None:
        # Killing only the master leaves imap sessions running for ~10 s; the group goes at once.
        stop_process_group(self.process)
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _mail_owner(rootless: bool) -> tuple[int, int]:
    if rootless:
        return os.getuid(), os.getgid()
    # Dovecot refuses mail owned by uid 0.
    try:
        return pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid
    except KeyError as exc:
        raise DovecotStartError("the `dovecot` system user/group does not exist") from exc


def start_dovecot(
    root: Path | None = None,
    *,
    env: dict[str, str] | None = None,
    output_path: Path | None = None,
    timeout_s: float = START_TIMEOUT_S,
    oauth2_introspection_url: str | None = None,
) -> DovecotServer:
    """Start Dovecot on two free loopback ports (IMAP, IMAPS) and wait until both greet.

    Its config, certificates, accounts and mail live in `root`: an empty directory the caller made (and
    removes), or by default a fresh temporary one that `stop()` removes. Every directory above `root`
    must let the dovecot user through (mode o+x) when running as root. Dovecot's own output goes to
    `output_path` (default: root/dovecot.stderr) and it runs with `env` (default: this process's).
    With `oauth2_introspection_url` (an RFC 7662 endpoint answering `{"active": true, "username": ...}`)
    it also advertises AUTH=XOAUTH2 and AUTH=OAUTHBEARER and checks every token there.
    Raises DovecotStartError, with the output and log tail, if it does not come up.
    """
    if not os.access(DOVECOT_BINARY, os.X_OK):
        raise DovecotStartError(f"{DOVECOT_BINARY} is not installed (Debian package dovecot-imapd)")
    rootless = os.geteuid() != 0
    mail_uid, mail_gid = _mail_owner(rootless)
    owns_root = root is None
    root = Path(tempfile.mkdtemp(prefix="jms-dovecot-")) if root is None else root
    output_path = output_path or root / "dovecot.stderr"
    try:
        # mkdtemp makes 0700; Dovecot's auth and mail processes (uid dovecot) must traverse it.
        os.chmod(root, 0o711)
        for name in ("users", "mail"):
            (root / name).mkdir(mode=0o711)
        tls = write_tls_files(root)
        port, ssl_port = free_port(), free_port()
        config = root / "dovecot.conf"
        args_path: Path | None = None
        if oauth2_introspection_url:
            args_path = root / OAUTH2_ARGS_NAME
            args_path.write_text(oauth2_args(oauth2_introspection_url))
            os.chmod(args_path, 0o644)  # read by the auth process, which runs as `dovecot`
        # base_dir (root/run) starts empty in this fresh directory: no stale master.pid can block the start.
        config.write_text(_render_config(root, tls, port, ssl_port, mail_uid, mail_gid, rootless, args_path))
        process = spawn([DOVECOT_BINARY, "-c", str(config), "-F"], output_path, env=env)
    except BaseException:
        if owns_root:
            shutil.rmtree(root, ignore_errors=True)
        raise

    server = DovecotServer(
        root,
        LOOPBACK,
        port,
        ssl_port,
        tls.ca_cert,
        mail_uid,
        mail_gid,
        process,
        output_path,
        owns_root,
        oauth2_introspection_url,
    )
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            plain = _read_greeting(port, None)
            secure = _read_greeting(ssl_port, server.ssl_context())
        except OSError as exc:  # not listening yet, or the TLS side not ready
            last_error = exc
            time.sleep(0.02)
            continue
        if plain.startswith(b"* OK") and secure.startswith(b"* OK"):
            return server
        last_error = RuntimeError(f"unexpected greetings {plain!r} / {secure!r}")
        time.sleep(0.02)
    detail = server.log_tail()
    server.stop()
    if process.returncode is not None:
        problem = f"Dovecot exited with status {process.returncode} before greeting"
    else:
        problem = (
            f"Dovecot did not greet on {LOOPBACK}:{port} (IMAP) and :{ssl_port} (IMAPS) within "
            f"{timeout_s:.0f} s ({last_error})"
        )
    raise DovecotStartError(f"{problem}\n--- dovecot output and log ---\n{detail}")


@dataclass
class ImapAccount(HelperSessionAccount):
    """One fresh mailbox user on the session's Dovecot, with helpers to seed and inspect its mail."""

    host: str
    port: int
    ssl_port: int
    ca_cert: str
    user: str
    password: str = field(repr=False)
    maildir: Path
    _server: DovecotServer = field(repr=False)
    _sessions: list[imaplib.IMAP4] = field(default_factory=list, repr=False)
    _helper: imaplib.IMAP4 | None = field(default=None, repr=False)
    _drop_clock_us: int = field(default=0, repr=False)

    def connect(
        self,
        ssl: bool = False,
        *,
        timeout: float | None = CLIENT_TIMEOUT_S,
        client_class: type[imaplib.IMAP4] | None = None,
    ) -> imaplib.IMAP4:
        """A logged-in client, logged out at teardown. IMAPS verifies the server against `ca_cert`.

        `client_class` swaps in an imaplib subclass (e.g. one that records what it sends).
        """
        client: imaplib.IMAP4
        if ssl:
            client = (client_class or imaplib.IMAP4_SSL)(
                self.host, self.ssl_port, ssl_context=self._server.ssl_context(), timeout=timeout
            )
        else:
            client = (client_class or imaplib.IMAP4)(self.host, self.port, timeout=timeout)
        client.login(self.user, self.password)
        self._sessions.append(client)
        return client

    def drop(self, raw: bytes, n: int = 1) -> list[Path]:
        """Deliver `n` copies straight into Maildir/new, as a local delivery agent would (fast seeding).

        Dovecot numbers new files by the time encoded in their names, so names carry a strictly
        increasing microsecond clock: UIDs follow the order of the drops.
        """
        new_dir, tmp_dir = self.maildir / "new", self.maildir / "tmp"
        uid, gid = self._server.mail_uid, self._server.mail_gid
        paths: list[Path] = []
        for _ in range(n):
            self._drop_clock_us = max(time.time_ns() // 1000, self._drop_clock_us + 1)
            seconds, micros = divmod(self._drop_clock_us, 1_000_000)
            name = f"{seconds}.M{micros:06d}P{os.getpid()}.jms-harness"
            staging = tmp_dir / name
            descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(descriptor, view) :]
                os.fchown(descriptor, uid, gid)
            finally:
                os.close(descriptor)
            os.rename(staging, new_dir / name)
            paths.append(new_dir / name)
        return paths

    def link_many(self, raw: bytes, n: int) -> None:
        """Put `n` unseen copies of `raw` into Maildir/cur as hard links (huge inboxes in seconds).

        Dovecot reads each file as its own message; files in cur/ with an empty `:2,` info are
        unseen, and link names carry increasing numbers, so UIDs follow their order. ext4 allows
        65,000 links per file, so a new source file is written every LINKS_PER_FILE links.
        """
        cur, tmp_dir = self.maildir / "cur", self.maildir / "tmp"
        source = tmp_dir / "link-source"
        for index in range(n):
            if index % LINKS_PER_FILE == 0:
                source = tmp_dir / f"link-source-{index}"
                source.write_bytes(raw)
                os.chown(source, self._server.mail_uid, self._server.mail_gid)
            self._drop_clock_us = max(time.time_ns() // 1000, self._drop_clock_us + 1)
            os.link(source, cur / f"{self._drop_clock_us}.M{index:07d}P{os.getpid()}.jms-links:2,")

    def reconnect(self) -> None:
        """Forget the helper session (after DovecotServer.restart): the next helper call logs in anew."""
        self._drop_helper()

    def _drop_helper(self) -> None:
        if self._helper is not None:
            with contextlib.suppress(Exception):
                self._helper.logout()
            self._sessions.remove(self._helper)
            self._helper = None

    def uidvalidity(self, mailbox: str = "INBOX") -> int:
        """The mailbox's current UIDVALIDITY (STATUS, so nothing gets selected)."""
        session = self._helper_session()
        typ, data = session.status(mailbox, "(UIDVALIDITY)")
        if typ != "OK":
            raise AssertionError(f"STATUS {mailbox} failed: {data!r}")
        match = _STATUS_UIDVALIDITY.search(data[0] or b"")
        if match is None:
            raise AssertionError(f"STATUS {mailbox} answered without UIDVALIDITY: {data!r}")
        return int(match.group(1))

    def unseen_count(self, mailbox: str = "INBOX") -> int:
        """How many messages lack \\Seen (keywords such as $JiraRejected do not matter here)."""
        session, _ = self._examine(mailbox)
        try:
            typ, data = session.search(None, "UNSEEN")
            if typ != "OK":
                raise AssertionError(f"SEARCH UNSEEN failed: {data!r}")
            return len((data[0] or b"").split())
        finally:
            session.unselect()

    def recreate_mailbox(self, name: str = "INBOX") -> int:
        """Give mailbox `name` a new UIDVALIDITY, keeping its messages and flags; returns the new value.

        Any mailbox but INBOX goes the IMAP way (messages parked in a scratch mailbox by UID COPY,
        DELETE, CREATE, UID MOVE back): every session, including ones that have `name` selected,
        sees a clean UIDVALIDITY change on its next SELECT. INBOX cannot be deleted in IMAP, so its
        `dovecot-uidlist` and index files are removed, as if the server had rebuilt its index:
        sessions opened afterwards see the new UIDVALIDITY, but a session that already had INBOX
        open gets "NO [SERVERBUG]" from Dovecot, so reconnect those.
        """
        before = self.uidvalidity(name)
        if name.upper() == "INBOX":
            # A session that has read the index keeps serving it from memory: later helpers need a new one.
            self._drop_helper()
            for path in self.maildir.iterdir():
                if path.name == "dovecot-uidlist" or path.name.startswith("dovecot.index"):
                    path.unlink()
        else:
            self._recreate_by_imap(name)
        after = self.uidvalidity(name)
        if after == before:
            raise AssertionError(f"UIDVALIDITY of {name} did not change ({before})")
        return after

    def _recreate_by_imap(self, name: str) -> None:
        session = self._helper_session()
        scratch = f"jms-recreate-{secrets.token_hex(4)}"

        def ok(response: tuple[str, list], what: str) -> list:
            typ, data = response
            if typ != "OK":
                raise AssertionError(f"{what} failed: {data!r}")
            return data

        ok(session.create(scratch), f"CREATE {scratch}")
        exists = int(ok(session.select(name), f"SELECT {name}")[0] or 0)
        if exists:
            ok(session.uid("COPY", "1:*", scratch), f"UID COPY to {scratch}")
        session.unselect()
        ok(session.delete(name), f"DELETE {name}")
        ok(session.create(name), f"CREATE {name}")
        if exists:
            ok(session.select(scratch), f"SELECT {scratch}")
            ok(session.uid("MOVE", "1:*", name), f"UID MOVE to {name}")
            session.unselect()
        ok(session.delete(scratch), f"DELETE {scratch}")

    def airflow_conn(self, ssl: bool = False) -> dict[str, object]:
        """The JSON form of an Airflow `imap` connection to this account.

        With ssl=True the provider builds `ssl.create_default_context()`, which verifies against the
        default trust store: point SSL_CERT_FILE at `ca_cert` (see `ssl_trust_env()`).
        """
        extra: dict[str, object] = {"use_ssl": ssl}
        if ssl:
            extra["ssl_context"] = "default"
        else:
            # Plain IMAP to this loopback test server: the hook refuses it without this extra.
            extra["allow_insecure_transport"] = True
        return {
            "conn_type": "imap",
            "host": self.host,
            "port": self.ssl_port if ssl else self.port,
            "login": self.user,
            "password": self.password,
            "extra": extra,
        }

    def airflow_oauth_conn(
        self, extra: dict[str, object], client_secret: str | None, *, ssl: bool = False
    ) -> dict[str, object]:
        """An `imap` connection that logs in with OAuth 2.0: the login is the mailbox, the password the
        client secret (None for a Google service-account key), `extra` the auth_type/token extras.

        The server must have been started with `oauth2_introspection_url`.
        """
        if self._server.oauth2_introspection_url is None:
            raise ValueError("this Dovecot was started without oauth2_introspection_url: it takes no tokens")
        conn = self.airflow_conn(ssl=ssl)
        conn["extra"] = {**conn["extra"], **extra}  # type: ignore[dict-item]
        if client_secret is None:
            del conn["password"]
        else:
            conn["password"] = client_secret
        return conn

    def login_methods(self) -> list[str]:
        """The SASL mechanism of every successful login as this user so far, from Dovecot's log
        (`Login: user=<u>, method=XOAUTH2, ...`), oldest first; the helper sessions log in with PLAIN."""
        pattern = re.compile(rf"Login: user=<{re.escape(self.user)}>, method=([A-Z0-9-]+)")
        try:
            text = self._server.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return pattern.findall(text)

    def ssl_trust_env(self) -> dict[str, str]:
        """Environment that makes OpenSSL's default trust store this server's CA."""
        return {"SSL_CERT_FILE": self.ca_cert}

    def close(self) -> None:
        """Log out every session this object opened and retire the user and its mail."""
        self._log_out_sessions()
        with contextlib.suppress(FileNotFoundError):
            (self._server.users_dir / self.user).unlink()
        shutil.rmtree(self.maildir.parent, ignore_errors=True)
