"""Liveness, readiness and metrics over HTTP on a stdlib server thread.

GET /health, GET /ready (JSON) and GET /metrics (Prometheus text). The handlers only read
shared state, and the database work they do (the /ready ping, the heads behind /metrics)
goes through a pool the poll loop does not use, so a slow client cannot stall the daemon.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_S = 5.0
"""A client that sends nothing for this long is dropped."""


class LoopState:
    """What the poll loop tells the health server; plain attributes, atomically replaced."""

    def __init__(self) -> None:
        self.last_iteration = time.monotonic()
        self.assigned_partitions: list[int] = []
        self.started = time.monotonic()

    def mark_alive(self, assigned_partitions: list[int]) -> None:
        self.assigned_partitions = assigned_partitions
        self.last_iteration = time.monotonic()


class HealthServer:
    """Serves /health (the loop iterated recently), /ready (database + partitions), /metrics."""

    def __init__(
        self, host: str, port: int, state: LoopState, liveness_timeout_s: float,
        database_ok: Callable[[], bool], metrics: Callable[[], tuple[bytes, str]],
    ):
        self.state = state
        self.liveness_timeout_s = liveness_timeout_s
        self.database_ok = database_ok
        self.metrics = metrics
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def health(self) -> tuple[int, dict[str, Any]]:
        age = time.monotonic() - self.state.last_iteration
        alive = age <= self.liveness_timeout_s
        body = {"status": "ok" if alive else "stalled", "last_poll_age_s": round(age, 3)}
        return (200 if alive else 503), body

    def ready(self) -> tuple[int, dict[str, Any]]:
        database = self.database_ok()
        partitions = list(self.state.assigned_partitions)
        ready = database and bool(partitions)
        body = {
            "status": "ready" if ready else "not ready",
            "database": "ok" if database else "unreachable",
            "assigned_partitions": partitions,
        }
        return (200 if ready else 503), body

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = CLIENT_TIMEOUT_S
            routes: ClassVar[dict[str, Callable[[], tuple[int, dict[str, Any]]]]] = {
                "/health": server.health,
                "/ready": server.ready,
            }

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send_bytes(200, *server.metrics())
                    return
                route = self.routes.get(path)
                if route is None:
                    self._send(404, {"error": "not found"})
                    return
                status, body = route()
                self._send(status, body)

            def _send(self, status: int, body: dict[str, Any]) -> None:
                self._send_bytes(status, json.dumps(body).encode(), "application/json")

            def _send_bytes(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("health request: " + format, *args)

        return Handler
