"""The Dovecot image's config and entrypoint, run for real on loopback with the container's paths swapped."""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devkit.processes import LOOPBACK, free_port, stop_process_group
from devkit.unavailable import service_unavailable
from tests.stack_files import (
    DOVECOT_DIR,
    dovecot_config,
    dovecot_imaps_port,
    env_example,
    environment_of,
    healthcheck_shell,
    resolved_services,
    services,
)

START_TIMEOUT_S = 15.0


@dataclass
class StackDovecot:
    root: Path
    port: int
    cert_dir: Path
    login: str
    password: str
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return (self.root / "dovecot.out").read_text(errors="replace")[-4000:]


def _localized_dovecot_config(root: Path, port: int, uid: int, gid: int) -> str:
    """The image's dovecot.conf with the container's paths, uid and port swapped for this machine's."""
    swaps = {
        "listen = *": f"listen = {LOOPBACK}",
        "base_dir = /run/dovecot": f"base_dir = {root}/run\nstate_dir = {root}/state",
        "</etc/dovecot/tls/": f"<{root}/tls/",
        "</etc/dovecot/private/": f"<{root}/private/",
        "/etc/dovecot/users": f"{root}/users",
        "first_valid_uid = 5000": f"first_valid_uid = {uid}",
        "last_valid_uid = 5000": f"last_valid_uid = {uid}",
        "uid=vmail gid=vmail home=/srv/mail/%n": f"uid={uid} gid={gid} home={root}/mail/%n",
        f"port = {dovecot_imaps_port()}": f"port = {port}",
    }
    config = dovecot_config()
    for old, new in swaps.items():
        assert config.count(old) == 1, (
            f"dovecot.conf changed: {old!r} no longer occurs once; update this test"
        )
        config = config.replace(old, new)
    return config


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def _imaps_greeting(port: int) -> bytes:
    with (
        socket.create_connection((LOOPBACK, port), timeout=2) as raw,
        _unverified_context().wrap_socket(raw) as tls,
    ):
        return tls.makefile("rb").readline()


@pytest.fixture(scope="module")
def stack_dovecot() -> Iterator[StackDovecot]:
    """Dovecot started by the image's entrypoint.sh from the image's dovecot.conf, with the account the
    dovecot service gets from .env.example."""
    if not shutil.which("dovecot") or not shutil.which("openssl"):
        service_unavailable("dovecot and openssl must be installed (make system-deps)")
    if os.geteuid() != 0:
        service_unavailable("the Dovecot image's config runs Dovecot as root, as in the container")
    mail_user = pwd.getpwnam("dovecot")  # stands in for the image's vmail user
    mailbox_env = environment_of(resolved_services()["dovecot"])
    root = Path(tempfile.mkdtemp(prefix="jms-stack-dovecot-"))
    os.chmod(root, 0o711)  # Dovecot's unprivileged processes must reach the users file and the mail
    for name, mode in (("tls", 0o755), ("private", 0o700), ("mail", 0o700)):
        (root / name).mkdir(mode=mode)
    os.chown(root / "mail", mail_user.pw_uid, mail_user.pw_gid)
    port = free_port()
    (root / "dovecot.conf").write_text(
        _localized_dovecot_config(root, port, mail_user.pw_uid, mail_user.pw_gid)
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") + ":/usr/sbin:/sbin",
        "DOVECOT_USER": mailbox_env["DOVECOT_USER"],
        "DOVECOT_PASSWORD": mailbox_env["DOVECOT_PASSWORD"],
        "DOVECOT_CONF": str(root / "dovecot.conf"),
        "DOVECOT_USERS_FILE": str(root / "users"),
        "DOVECOT_CERT_DIR": str(root / "tls"),
        "DOVECOT_KEY_DIR": str(root / "private"),
    }
    with open(root / "dovecot.out", "wb") as out:
        process = subprocess.Popen(
            ["/bin/sh", str(DOVECOT_DIR / "entrypoint.sh")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = StackDovecot(
        root, port, root / "tls", mailbox_env["DOVECOT_USER"], mailbox_env["DOVECOT_PASSWORD"], process
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if _imaps_greeting(port).startswith(b"* OK"):
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            log = server.log()
            shutil.rmtree(root, ignore_errors=True)
            service_unavailable(f"the Dovecot image's entrypoint did not bring up IMAPS:\n{log}")
        time.sleep(0.05)
    try:
        yield server
    finally:
        stop_process_group(process)
        shutil.rmtree(root, ignore_errors=True)


def test_dovecot_users_file_holds_a_hash_not_the_password(stack_dovecot):
    users = (stack_dovecot.root / "users").read_text()
    assert users.startswith(f"{stack_dovecot.login}:{{SHA512-CRYPT}}$6$")
    assert stack_dovecot.password not in users
    assert (stack_dovecot.root / "users").stat().st_mode & 0o007 == 0, "the users file is world-readable"


def test_dovecot_certificate_verifies_for_the_host_the_connection_uses(stack_dovecot):
    # OpenSSL finds the certificate through its hashed name, as SSL_CERT_DIR makes it in the workers.
    context = ssl.create_default_context(capath=str(stack_dovecot.cert_dir))
    with (
        socket.create_connection((LOOPBACK, stack_dovecot.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=env_example()["IMAP_HOST"]) as tls,
    ):
        assert tls.makefile("rb").readline().startswith(b"* OK")
    with (
        socket.create_connection((LOOPBACK, stack_dovecot.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="imap.example.com")


def test_imap_default_logs_in_to_the_dovecot_image_with_a_verified_certificate(stack_dovecot, monkeypatch):
    from airflow.providers.imap.hooks.imap import ImapHook

    conn = json.loads(environment_of(resolved_services()["airflow-worker"])["AIRFLOW_CONN_IMAP_DEFAULT"])
    # "localhost" is the certificate's other name and resolves here; the extra stays as shipped.
    conn.update(host="localhost", port=stack_dovecot.port)
    monkeypatch.setenv("AIRFLOW_CONN_IMAP_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("SSL_CERT_DIR", f"/etc/ssl/certs:{stack_dovecot.cert_dir}")
    with ImapHook(imap_conn_id="imap_default") as hook:
        client = hook.mail_client
        typ, _ = client.select("INBOX")
        assert typ == "OK"
        message = b"From: jira@jira-standin\r\nSubject: [JIRA] (DEMO-1) stack check\r\n\r\nbody\r\n"
        assert client.append("INBOX", None, None, message)[0] == "OK"
        typ, data = client.uid("SEARCH", "UNSEEN")
        assert typ == "OK" and len(data[0].split()) >= 1, "appended mail is not stored as unseen"


def test_dovecot_healthcheck_passes_only_while_imaps_answers(stack_dovecot):
    argv = healthcheck_shell(services()["dovecot"])
    container_port = f"127.0.0.1:{dovecot_imaps_port()}"
    assert container_port in argv[-1], "the healthcheck does not probe the imaps listener"
    live = subprocess.run(
        [*argv[:-1], argv[-1].replace(container_port, f"127.0.0.1:{stack_dovecot.port}")],
        capture_output=True,
        timeout=15,
    )
    assert live.returncode == 0, live.stderr
    dead = subprocess.run(
        [*argv[:-1], argv[-1].replace(container_port, f"127.0.0.1:{free_port()}")],
        capture_output=True,
        timeout=15,
    )
    assert dead.returncode != 0, "the healthcheck passes with nothing listening"


def test_dovecot_entrypoint_refuses_a_login_that_would_corrupt_the_users_file(tmp_path):
    users_file = tmp_path / "users"
    result = subprocess.run(
        ["/bin/sh", str(DOVECOT_DIR / "entrypoint.sh")],
        env={
            "PATH": os.environ["PATH"],
            "DOVECOT_USER": "jira:admin",
            "DOVECOT_PASSWORD": "x",
            "DOVECOT_USERS_FILE": str(users_file),
            "DOVECOT_CERT_DIR": str(tmp_path),
            "DOVECOT_KEY_DIR": str(tmp_path),
            "DOVECOT_CONF": str(tmp_path / "none.conf"),
        },
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert result.returncode != 0 and "must not contain ':'" in result.stderr
    assert not users_file.exists()


def test_dovecot_rejects_a_wrong_password(stack_dovecot):
    # Last of the Dovecot tests: a failed login earns this address an auth penalty.
    client = imaplib.IMAP4_SSL(LOOPBACK, stack_dovecot.port, ssl_context=_unverified_context())
    try:
        with pytest.raises(imaplib.IMAP4.error):
            client.login(stack_dovecot.login, stack_dovecot.password + "-wrong")
    finally:
        with contextlib.suppress(Exception):
            client.shutdown()
