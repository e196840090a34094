"""The ops endpoint: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (can work).

Readiness runs its checks when asked (at most once a second), so a probe sees
Redis or Kafka going away within a second and never blocks the dataflow.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Check = Callable[[], None]
"""Raises when the dependency it checks is not usable."""


class OpsServer:
    """Serves the three endpoints from a daemon thread."""

    def __init__(self, port: int, checks: dict[str, Check], host: str = "0.0.0.0") -> None:
        self.checks = checks
        self._cache: tuple[float, int, bytes] = (0.0, 503, b"{}")
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b'{"status":"alive"}', "application/json")
                elif path == "/readyz":
                    code, body = server.readiness()
                    self._reply(code, body, "application/json")
                else:
                    self._reply(404, b'{"error":"not found"}', "application/json")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # scrapes every few seconds would drown the engine's own log

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="ops-http", daemon=True)

    def start(self) -> "OpsServer":
        """Begin serving; returns self."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def readiness(self) -> tuple[int, bytes]:
        """HTTP status and JSON body of the readiness checks."""
        with self._lock:
            checked, code, body = self._cache
            if time.monotonic() - checked < 1.0:
                return code, body
            results: dict[str, str] = {}
            for name, check in self.checks.items():
                try:
                    check()
                    results[name] = "ok"
                except Exception as exc:  # noqa: BLE001 - any failure means not ready
                    results[name] = f"failing: {type(exc).__name__}: {exc}"[:300]
            code = 200 if all(v == "ok" for v in results.values()) else 503
            body = orjson.dumps({"ready": code == 200, "checks": results})
            self._cache = (time.monotonic(), code, body)
            return code, body
