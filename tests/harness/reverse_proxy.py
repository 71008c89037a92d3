"""A tiny reverse proxy as a TLS-terminating one forwards: X-Forwarded-Proto/Host/For, Host rewritten.

What nginx's `proxy_pass http://backend;` with `proxy_set_header X-Forwarded-*` does after it has
terminated TLS for `public_host`: the api-server sees a plain-HTTP request whose Host is its own
address, and learns the browser's scheme and host only from the headers. The test client speaks
plain HTTP to it (no certificate needed): only the headers matter to the api-server.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from devkit.processes import LOOPBACK

# Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded; Host is the backend's, as proxy_pass sets it.
_NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}


class ReverseProxy:
    """`with ReverseProxy(backend_port, public_host="airflow.example.test") as proxy:` serves `proxy.url`."""

    def __init__(self, backend_port: int, *, public_host: str, public_scheme: str = "https") -> None:
        backend = (LOOPBACK, backend_port)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
                headers |= {
                    "Host": f"{backend[0]}:{backend[1]}",
                    "X-Forwarded-Proto": public_scheme,
                    "X-Forwarded-Host": public_host,
                    "X-Forwarded-For": self.client_address[0],
                }
                upstream = http.client.HTTPConnection(*backend, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    answer = upstream.getresponse()
                    payload = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in _NOT_FORWARDED:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _relay

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def __enter__(self) -> ReverseProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
