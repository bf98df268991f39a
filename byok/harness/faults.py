"""FaultInjectingProxy: a named fault injector at the HTTP boundary in front of a real server.

It forwards requests to the real Barbican unchanged, except for the faults it is told to
inject: answer 500, truncate the body, answer 200 with garbage, or hang without answering.
``fail_first=N`` injects the fault only into the first N requests (to show bounded retries
recovering); ``fail_after=K`` lets K requests through first (a fault in the middle of an
operation). Used only by tests and experiments about outages (never by the product); it is
the only stand-in for a real component in byok, and its name says so.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from urllib.parse import urlsplit

MODES = ("pass", "error500", "truncate", "garbage", "hang")


class FaultInjectingProxy:
    def __init__(self, upstream: str, mode: str = "pass", *, fail_first: int | None = None,
                 fail_after: int = 0):
        assert mode in MODES, mode
        self.upstream = urlsplit(upstream)
        self.mode = mode
        self.fail_first = fail_first
        self.fail_after = fail_after
        self.requests = 0
        self.injected = 0
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.requests += 1
                    proxy.seen.append((self.command, self.path.split("?", 1)[0]))
                    inject = proxy.mode != "pass" and proxy.requests > proxy.fail_after and (
                        proxy.fail_first is None or proxy.injected < proxy.fail_first
                    )
                    if inject:
                        proxy.injected += 1
                if inject and proxy.mode == "hang":
                    proxy._stop.wait(60)
                    self.close_connection = True
                    return
                if inject and proxy.mode == "error500":
                    self._reply(500, b'{"title": "injected fault"}', "application/json")
                    return
                if inject and proxy.mode == "garbage":
                    self._reply(200, b"\x00\xffnot json at all{{{", "application/json")
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if inject and proxy.mode == "truncate" and data:
                    # Announce the full length, send half, close: a broken body.
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection"):
                            self.send_header(k, v)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[: max(1, len(data) // 2)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _reply(self, code, data, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultInjectingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        time.sleep(0.05)
