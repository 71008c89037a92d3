"""A real Courier IMAP 5.0.13 (Debian 12's) on loopback, without custom keywords, for tests.

With `IMAP_KEYWORDS=0` Courier behaves like Exchange Online towards keywords: PERMANENTFLAGS has
no `\\*`, a STORE of a keyword answers NO, and `\\Seen` combined with a keyword in one STORE fails
whole. See ../shared/FACTS.md.

`courier-imap` cannot be installed next to `dovecot-imapd` (both provide imap-server; apt removes
Dovecot), so scripts/install_courier.sh unpacks the .debs into a cache directory with `dpkg -x`,
and the server runs from there. Its compiled-in paths are made visible only to its own processes:
each server runs in a private mount namespace (`unshare -m`, propagation private) where three
read-only overlays put

- `/etc/courier`  -> <tmp>/etc     (authdaemonrc, userdb.dat, userdbshadow.dat)
- `/run/courier`  -> <tmp>/run     (authdaemon/socket)
- `/usr/lib/courier`, `/usr/lib/courier-authlib` -> the cache's unpacked tree

on top of the host's /etc, /run and /usr/lib (the first two as symlinks in a one-entry layer, so
files written later, such as a regenerated userdb, are seen at once). Nothing on the host changes,
and the mounts vanish with the namespace's last process. Libraries Debian 12 does not install by
default (libcourier-unicode4, libidn12, libgamin0, libltdl7, libpcre3) come from the cache via
LD_LIBRARY_PATH; gamin's gam_server (GAMIN_DEBUG_SERVER) serves imapd's FAM watches, without which
every login and APPEND stalls ~1.2 s. Needs root (mount namespaces, and imapd switches to the
`mail` user after login).

    server = start_courier()
    account = server.account            # or server.create_account()
    uid = account.append(b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
    account.flags_by_uid()              # {uid: set()}
    os.environ["AIRFLOW_CONN_IMAP_DEFAULT"] = json.dumps(account.airflow_conn())
    server.stop()
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import imaplib
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devkit.imap_account import HelperSessionAccount, ok
from devkit.processes import LOOPBACK, STOP_TIMEOUT_S, free_port, log_tail, proc_stat, terminate

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO / "scripts" / "install_courier.sh"
INSTALL_TIMEOUT_S = 300.0
START_TIMEOUT_S = 15.0
CLIENT_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 3

# Debian's /etc/courier/imapd (which the packaged start script sources), minus what only matters
# for a daemon on port 143 (logger, pid file, access file, ulimit). IMAP_KEYWORDS is set per server.
IMAPD_ENV: dict[str, str] = {
    "IMAP_CAPABILITY": (
        "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE"
    ),
    "IMAP_ACL": "1",
    "IMAP_PROXY": "0",
    "IMAP_PROXY_FOREIGN": "0",
    "IMAP_IDLE_TIMEOUT": "60",
    "IMAP_MAILBOX_SANITY_CHECK": "1",
    "IMAP_DISABLETHREADSORT": "0",
    "IMAP_CHECK_ALL_FOLDERS": "0",
    "IMAP_OBSOLETE_CLIENT": "0",
    "IMAP_UMASK": "022",
    "IMAP_USELOCKS": "1",
    "IMAP_ENHANCEDIDLE": "0",
    "IMAP_TRASHFOLDERNAME": "Trash",
    # Debian empties Trash after 7 days on logout; tests want nothing to vanish on its own.
    "IMAP_EMPTYTRASH": "",
    "IMAP_MOVE_EXPUNGE_TO_TRASH": "0",
    "IMAP_STARTTLS": "NO",
    "HEADERFROM": "X-IMAP-Sender",
}

AUTHDAEMONRC = """\
# Written by devkit/courier.py for one test server.
authmodulelist="authuserdb"
daemons=2
authdaemonvar=/run/courier/authdaemon
DEBUG_LOGIN=0
DEFAULTOPTIONS=""
LOGGEROPTS=""
"""

# Runs as root inside `unshare -m`: mounts the overlays, starts authdaemond, waits for its socket,
# then becomes couriertcpd (so the Popen's pid is the listener and the process group's leader).
_NAMESPACE_SCRIPT = r"""
set -eu
root=$1 cache=$2 port=$3 maxprocs=$4
mount -t overlay jms-courier-etc -o "lowerdir=$root/layers/etc:/etc" /etc
mount -t overlay jms-courier-run -o "lowerdir=$root/layers/run:/run" /run
mount -t overlay jms-courier-lib -o "lowerdir=$cache/usr/lib:/usr/lib" /usr/lib
umask 022
/usr/lib/courier/courier-authlib/authdaemond &
authdaemond=$!
tries=0
until [ -S /run/courier/authdaemon/socket ]; do
  kill -0 "$authdaemond" 2>/dev/null || { echo "devkit.courier: authdaemond exited" >&2; exit 1; }
  tries=$((tries + 1))
  [ "$tries" -le 200 ] || { echo "devkit.courier: no authdaemon socket after 10 s" >&2; exit 1; }
  sleep 0.05
done
echo "devkit.courier: authdaemond ready, couriertcpd on 127.0.0.1:$port" >&2
exec "$cache/usr/sbin/couriertcpd" -address=127.0.0.1 -maxprocs="$maxprocs" -maxperip="$maxprocs" \
  -nodnslookup -noidentlookup "$port" \
  /usr/lib/courier/courier/imaplogin "$cache/usr/bin/imapd" Maildir
"""

_LOGIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CourierStartError(RuntimeError):
    """Courier could not be unpacked or did not come up; the message carries the log tail."""


def install_courier(timeout_s: float = INSTALL_TIMEOUT_S) -> Path:
    """Run scripts/install_courier.sh (a few ms once unpacked) and return the unpacked root."""
    try:
        result = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CourierStartError(f"{INSTALL_SCRIPT.name} did not finish: {exc}") from exc
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise CourierStartError(
            f"{INSTALL_SCRIPT.name} failed with status {result.returncode}:\n{result.stderr.strip()[-4000:]}"
        )
    return Path(lines[-1])


def _library_path(cache_root: Path) -> str:
    """The cache's library directories: /usr/lib (authlib) and the multiarch ones (e.g. x86_64-linux-gnu)."""
    directories = [cache_root / "usr/lib"]
    directories += sorted((cache_root / "usr/lib").glob("*-linux-gnu*"))
    directories += sorted((cache_root / "lib").glob("*-linux-gnu*"))
    return ":".join(str(d) for d in directories if d.is_dir())


def _systempw(password: str) -> str:
    """A userdb `systempw` value authlib checks ({SHA256}: unsalted, fine for throw-away accounts)."""
    return "{SHA256}" + base64.b64encode(hashlib.sha256(password.encode()).digest()).decode()


class NoDelayIMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 with TCP_NODELAY: without it each APPEND waits ~40 ms on Nagle + delayed ACK."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = super()._create_socket(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@dataclass
class CourierAccount(HelperSessionAccount):
    """One userdb login on a CourierServer, with helpers to seed and inspect its mail."""

    host: str
    port: int
    login: str
    password: str = field(repr=False)
    maildir: Path
    _server: CourierServer = field(repr=False)
    _sessions: list[imaplib.IMAP4] = field(default_factory=list, repr=False)
    _helper: imaplib.IMAP4 | None = field(default=None, repr=False)

    @property
    def user(self) -> str:
        """The login, under the name tests.harness.dovecot.ImapAccount uses."""
        return self.login

    def connect(
        self, *, timeout: float | None = CLIENT_TIMEOUT_S, client_class: type[imaplib.IMAP4] = NoDelayIMAP4
    ) -> imaplib.IMAP4:
        """A logged-in plain-IMAP client (TCP_NODELAY by default), logged out by `close()`."""
        client = client_class(self.host, self.port, timeout=timeout)
        try:
            ok(client.login(self.login, self.password), f"LOGIN {self.login}")
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        self._sessions.append(client)
        return client

    def airflow_conn(self) -> dict[str, object]:
        """The JSON form of an Airflow `imap` connection to this account (plain IMAP on loopback)."""
        return {
            "conn_type": "imap",
            "host": self.host,
            "port": self.port,
            "login": self.login,
            "password": self.password,
            # Plain IMAP to this loopback test server: the hook refuses it without the second extra.
            "extra": {"use_ssl": False, "allow_insecure_transport": True},
        }

    def close(self) -> None:
        """Log out every session this object opened (the account and its mail stay)."""
        self._log_out_sessions()


@dataclass
class CourierServer:
    """A running Courier imapd; `stop()` ends its whole process group and removes its directory."""

    root: Path
    cache_root: Path
    host: str
    port: int
    keywords: bool
    mail_uid: int
    mail_gid: int
    process: subprocess.Popen[bytes]
    # "GAM_CLIENT_ID=…" in the environment of this server's processes, and its mount namespace
    # (/proc/PID/ns/mnt), which find the gam_server that leaves the process group.
    marker: str
    mount_ns: str = ""
    accounts: list[CourierAccount] = field(default_factory=list, repr=False)
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def log_path(self) -> Path:
        return self.root / "courier.log"

    @property
    def account(self) -> CourierAccount:
        """The account `start_courier` created."""
        return self.accounts[0]

    def log_tail(self, max_lines: int = 40) -> str:
        return log_tail(self.log_path, max_lines)

    def create_account(self, login: str | None = None, password: str | None = None) -> CourierAccount:
        """A userdb login with an empty Maildir; usable at once (authlib re-reads userdb.dat)."""
        with self._lock:
            login = login or f"u{next(self._numbers):04d}{secrets.token_hex(3)}"
            if not _LOGIN_RE.fullmatch(login) or any(a.login == login for a in self.accounts):
                raise ValueError(f"bad or duplicate login {login!r}")
            password = password or secrets.token_urlsafe(18)
            home = self.root / "mail" / login
            maildir = home / "Maildir"
            for directory in (home, maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
                directory.mkdir(mode=0o700)
                os.chown(directory, self.mail_uid, self.mail_gid)
            account = CourierAccount(self.host, self.port, login, password, maildir, self)
            self._write_userdb([*self.accounts, account])
            self.accounts.append(account)
            return account

    def _write_userdb(self, accounts: list[CourierAccount]) -> None:
        # What makeuserdb does, without its compiled-in paths: non-password fields go to userdb.dat,
        # *pw= fields to userdbshadow.dat (root only); makedatprog writes each and renames it in place.
        main = "".join(
            f"{a.login}\tuid={self.mail_uid}|gid={self.mail_gid}|home={a.maildir.parent}|mail={a.maildir}|_=\n"
            for a in accounts
        )
        shadow = "".join(f"{a.login}\tsystempw={_systempw(a.password)}\n" for a in accounts)
        etc = self.root / "etc"
        makedat = self.cache_root / "usr/lib/courier/courier-authlib/makedatprog"
        env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": _library_path(self.cache_root)}
        for name, text, mode in (("userdb", main, 0o644), ("userdbshadow", shadow, 0o600)):
            old_umask = os.umask(0o777 & ~mode)
            try:
                result = subprocess.run(
                    [str(makedat), "-", str(etc / f"{name}.tmp"), str(etc / f"{name}.dat")],
                    input=(text + ".\n").encode(),
                    capture_output=True,
                    env=env,
                    timeout=30,
                    check=False,
                )
            finally:
                os.umask(old_umask)
            if result.returncode != 0:
                raise CourierStartError(
                    f"makedatprog {name} failed: {result.stderr.decode(errors='replace')}"
                )

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after STOP_TIMEOUT_S; remove the directory."""
        for account in self.accounts:
            account.close()
        self._stop_processes()
        shutil.rmtree(self.root, ignore_errors=True)

    def _note_mount_namespace(self) -> None:
        # Only meaningful once unshare has run (it execs the shell in the new namespace).
        with contextlib.suppress(OSError):
            ns = os.readlink(f"/proc/{self.process.pid}/ns/mnt")
            if ns != os.readlink("/proc/self/ns/mnt"):
                self.mount_ns = ns

    def processes(self) -> list[int]:
        """The server's live processes (see `server_processes`)."""
        return server_processes(self.process.pid, self.mount_ns, self.marker)

    def _stop_processes(self) -> None:
        if not self.mount_ns:
            self._note_mount_namespace()
        _stop_processes(self.process, self.mount_ns, self.marker)

    def __enter__(self) -> CourierServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def server_processes(pgid: int, mount_ns: str, marker: str) -> list[int]:
    """Live (non-zombie) processes of one server.

    That is its process group, plus whatever left the group inside its mount namespace and carries
    its `GAM_CLIENT_ID` (libgamin starts gam_server in a session of its own).
    """
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = proc_stat(int(entry.name))
        if stat is None or stat.state == "Z":
            continue
        if stat.pgid == pgid:
            members.append(int(entry.name))
            continue
        if not mount_ns:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"{entry.path}/ns/mnt") != mount_ns:
                continue
            if marker.encode() in Path(entry.path, "environ").read_bytes().split(b"\0"):
                members.append(int(entry.name))
    return members


def _stop_processes(
    process: subprocess.Popen[bytes], mount_ns: str, marker: str, timeout_s: float = STOP_TIMEOUT_S
) -> None:
    terminate(lambda: server_processes(process.pid, mount_ns, marker), timeout_s)
    process.wait(timeout=timeout_s)


def _read_greeting(port: int) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=2.0) as sock:
        return sock.makefile("rb").readline()


def _mail_ids() -> tuple[int, int]:
    # imapd switches to the account's uid after login; Debian's `mail` user, else nobody.
    for name in ("mail", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    return 65534, 65534


def _check_host() -> None:
    if os.geteuid() != 0:
        raise CourierStartError("Courier runs in its own mount namespace: that needs root")
    if shutil.which("unshare") is None:
        raise CourierStartError("`unshare` (util-linux) is not installed")
    with open("/proc/filesystems") as filesystems:
        if not any(line.split()[-1:] == ["overlay"] for line in filesystems):
            raise CourierStartError("the kernel has no overlay filesystem (modprobe overlay)")


def start_courier(
    *,
    keywords: bool = False,
    login: str | None = None,
    password: str | None = None,
    cache_root: Path | None = None,
    imapd_env: Mapping[str, str] | None = None,
    max_processes: int = 100,
    start_timeout_s: float = START_TIMEOUT_S,
) -> CourierServer:
    """Unpack Courier if needed, start imapd on a free 127.0.0.1 port and wait for its greeting.

    `keywords=False` sets IMAP_KEYWORDS=0 (the Exchange-like server); `imapd_env` overrides any of
    IMAPD_ENV. One account (`server.account`, `login`/`password` or random) exists on return.
    Raises CourierStartError with the log tail when the server does not greet within the timeout.
    """
    _check_host()
    cache_root = cache_root or install_courier()
    root = Path(tempfile.mkdtemp(prefix="jms-courier-"))
    try:
        for path in (root, cache_root):
            if any(c in str(path) for c in ":,\\ "):
                raise CourierStartError(f"{path}: overlay mount options cannot hold ':', ',', '\\' or spaces")
        # mkdtemp makes 0700; imapd (as the mail user) must reach the Maildirs below it.
        os.chmod(root, 0o711)
        for name in ("etc", "run", "run/authdaemon", "layers", "layers/etc", "layers/run", "mail"):
            (root / name).mkdir(mode=0o711 if name == "mail" else 0o755)
        (root / "layers/etc/courier").symlink_to(root / "etc")
        (root / "layers/run/courier").symlink_to(root / "run")
        (root / "etc/authdaemonrc").write_text(AUTHDAEMONRC)
        mail_uid, mail_gid = _mail_ids()
        gam_client_id = f"jms-courier-{secrets.token_hex(6)}"
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C",
            "LD_LIBRARY_PATH": _library_path(cache_root),
            **IMAPD_ENV,
            "IMAP_KEYWORDS": "1" if keywords else "0",
            # imapd's FAM watches go to gamin's server, which libgamin spawns from the cache.
            "GAMIN_DEBUG_SERVER": str(cache_root / "usr/libexec/gam_server"),
            "GAM_CLIENT_ID": gam_client_id,
            **(imapd_env or {}),
        }
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise

    server: CourierServer | None = None
    problem = ""
    for _attempt in range(PORT_ATTEMPTS):
        port = free_port()
        with open(root / "courier.log", "ab") as log:
            process = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/sh",
                    "-c",
                    _NAMESPACE_SCRIPT,
                    "courier-namespace",
                    str(root),
                    str(cache_root),
                    str(port),
                    str(max_processes),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        server = CourierServer(
            root,
            cache_root,
            LOOPBACK,
            port,
            keywords,
            mail_uid,
            mail_gid,
            process,
            marker=f"GAM_CLIENT_ID={gam_client_id}",
        )
        problem = _await_greeting(server, start_timeout_s)
        if not problem:
            server._note_mount_namespace()
            try:
                server.create_account(login, password)
            except BaseException:
                server.stop()
                raise
            return server
        server._stop_processes()
        if "Address already in use" not in server.log_tail():
            break
    detail = server.log_tail() if server else ""
    shutil.rmtree(root, ignore_errors=True)
    raise CourierStartError(f"{problem}\n--- courier log ---\n{detail}")


def _await_greeting(server: CourierServer, timeout_s: float) -> str:
    """'' once imapd greets with `* OK`, else what went wrong."""
    deadline = time.monotonic() + timeout_s
    last_error: object = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return f"Courier exited with status {server.process.returncode} before greeting"
        try:
            greeting = _read_greeting(server.port)
        except OSError as exc:  # not listening yet
            last_error = exc
            time.sleep(0.02)
            continue
        if greeting.startswith(b"* OK"):
            return ""
        last_error = f"unexpected greeting {greeting!r}"
        time.sleep(0.02)
    return f"Courier did not greet on {LOOPBACK}:{server.port} within {timeout_s:.0f} s ({last_error})"
