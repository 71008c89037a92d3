"""A loopback TCP relay in front of an IMAP server that counts the sessions it carries, or stalls them.

Forwarding, every connection is one IMAP session (one login) to the server behind, so `sessions` counts
the logins a client made without reading the server's log. Stalling (`stalled = True`), it accepts new
connections and never sends the greeting, as an IMAP server does when it hangs or is overloaded: the
client waits until its own timeout. Written by hand because no library offers a switchable stall.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from devkit.processes import LOOPBACK

_CHUNK = 65536


class ImapRelay:
    """`with ImapRelay(host, port) as relay:` listens on `relay.port` until the block ends."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self.stalled = False
        self.sessions = 0
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closing = False

    def __enter__(self) -> ImapRelay:
        threading.Thread(target=self._accept, daemon=True, name="imap-relay").start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._closing = True
        self._listener.close()
        with self._lock:
            for held in self._held:
                held.close()

    def stalled_clients(self) -> int:
        """How many stalled connections the clients still keep open."""
        with self._lock:
            still = []
            for held in self._held:
                if _closed_by_peer(held):
                    held.close()
                else:
                    still.append(held)
            self._held = still
            return len(still)

    def wait_until_stalled_clients_left(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.stalled_clients() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.stalled_clients() == 0

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self.stalled:
                    self._held.append(client)
                    continue
                self.sessions += 1
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self._target, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(_CHUNK):
            sink.sendall(data)
    for end in (source, sink):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()


def _closed_by_peer(conn: socket.socket) -> bool:
    try:
        conn.setblocking(False)
        return conn.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            conn.setblocking(True)
