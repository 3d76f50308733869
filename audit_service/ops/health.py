"""Liveness, readiness and metrics over HTTP on a stdlib server thread.

GET /health, GET /ready (JSON) and GET /metrics (Prometheus text), nothing else. The port
must not become a way to stall or exhaust the daemon, so the server is defensive:
- at most MAX_CONNECTIONS are served at once (one thread each); more get an immediate
  503 and are closed, so threads cannot pile up;
- the request line and headers must arrive within REQUEST_TIMEOUT_S in total and fit in
  MAX_REQUEST_BYTES: a client that sends nothing, or dribbles bytes, is dropped;
- other methods get 405 and other paths 404, and errors carry no body: nothing about the
  request or the server is echoed back;
- the database work the handlers do (the /ready ping, the heads behind /metrics) goes
  through a pool the poll loop does not use, with a short statement timeout.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Final

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 64
"""Connections served at once: probes and scrapes need a handful; the rest is headroom so
a few dozen idle sockets do not lock the probes out."""
REQUEST_TIMEOUT_S: Final = 2.0
"""The whole request head must arrive within this long, however it is dribbled."""
WRITE_TIMEOUT_S: Final = 5.0
"""A client that does not read its response is dropped after this long."""
MAX_REQUEST_BYTES: Final = 8192
"""Request line plus headers; a GET without a body needs far less."""
LISTEN_BACKLOG: Final = 64
"""Pending connections the kernel queues while the accept loop catches up with a burst."""
SHUTDOWN_POLL_S: Final = 0.1
"""How often the accept loop checks for stop(): bounds the server's share of shutdown."""

_RECV_CHUNK_BYTES: Final = 4096
_BUSY_RESPONSE: Final = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)


class LoopState:
    """What the poll loop tells the health server; plain attributes, atomically replaced."""

    def __init__(self) -> None:
        self.last_iteration = time.monotonic()
        self.assigned_partitions: list[int] = []
        self.started = time.monotonic()

    def mark_alive(self, assigned_partitions: list[int]) -> None:
        self.assigned_partitions = assigned_partitions
        self.last_iteration = time.monotonic()


class _RequestHead:
    """The handler's `rfile`: reads the request head under a byte budget and one deadline.

    A per-read socket timeout alone would let a client that sends a byte every second
    hold a thread for hours; here every read gets only what is left of the deadline.
    """

    def __init__(self, sock: socket.socket, max_bytes: int, timeout_s: float):
        self._sock = sock
        self._budget = max_bytes
        self._deadline = time.monotonic() + timeout_s
        self._buffer = bytearray()

    def readline(self, size: int = -1) -> bytes:
        """One line (or `size` bytes of it); raises LineTooLong past the budget and
        TimeoutError past the deadline (which BaseHTTPRequestHandler treats as a drop)."""
        while True:
            end = self._buffer.find(b"\n") + 1
            if not end and 0 <= size <= len(self._buffer):
                end = size
            if end:
                end = min(end, size) if size >= 0 else end
                line = bytes(self._buffer[:end])
                del self._buffer[:end]
                return line
            if self._budget <= 0:
                raise http.client.LineTooLong("request head")
            remaining_s = self._deadline - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError("request head not received in time")
            self._sock.settimeout(remaining_s)
            chunk = self._sock.recv(min(_RECV_CHUNK_BYTES, self._budget))
            if not chunk:
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
            self._budget -= len(chunk)
            self._buffer += chunk

    def close(self) -> None:
        self._buffer.clear()


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them."""

    daemon_threads = True
    block_on_close = False  # stop() must not wait for a slow client's thread
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int):
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("health server busy, connection refused", extra={"client": client_address})
            try:
                request.setblocking(False)  # the accept loop must never wait on a client
                request.send(_BUSY_RESPONSE)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets or stops reading is not the daemon's problem: no traceback.
        log.debug("health request failed", exc_info=True, extra={"client": client_address})


class HealthServer:
    """Serves /health (the loop iterated recently), /ready (database + partitions), /metrics."""

    def __init__(
        self, host: str, port: int, state: LoopState, liveness_timeout_s: float,
        database_ok: Callable[[], bool], metrics: Callable[[], tuple[bytes, str]],
        max_connections: int = MAX_CONNECTIONS,
        ready_details: Callable[[], dict[str, Any]] | None = None,
    ):
        self.state = state
        self.ready_details = ready_details
        self.liveness_timeout_s = liveness_timeout_s
        self.database_ok = database_ok
        self.metrics = metrics
        self._server = _BoundedServer((host, port), self._handler_class(), max_connections)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S},
            name="health-server", daemon=True,
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
        if self.ready_details is not None:
            body.update(self.ready_details())
        return (200 if ready else 503), body

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            routes: ClassVar[dict[str, Callable[[], tuple[int, dict[str, Any]]]]] = {
                "/health": server.health,
                "/ready": server.ready,
            }

            default_request_version = "HTTP/1.0"  # even a malformed request gets a status

            def version_string(self) -> str:
                return "audit-service"  # no Python version for a scanner to match

            def setup(self) -> None:
                super().setup()
                self.rfile.close()
                self.rfile = _RequestHead(  # type: ignore[assignment]
                    self.connection, MAX_REQUEST_BYTES, REQUEST_TIMEOUT_S
                )

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except http.client.LineTooLong:
                    # Only an oversized request line gets here: parse_request answers
                    # oversized headers itself (431).
                    self.requestline, self.request_version, self.command = "", "", ""
                    self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)

            def parse_request(self) -> bool:
                if not super().parse_request():
                    return False
                if self.command != "GET":
                    self._send_bytes(HTTPStatus.METHOD_NOT_ALLOWED, b"", None, allow="GET")
                    return False
                return True

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send_bytes(200, *server.metrics())
                    return
                route = self.routes.get(path)
                if route is None:
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                status, body = route()
                self._send_bytes(status, json.dumps(body).encode(), "application/json")

            def send_error(
                self, code: int, message: str | None = None, explain: str | None = None
            ) -> None:
                """Status only: the stdlib's error page would echo the request back."""
                self.log_error("code %d, message %s", code, message)
                self._send_bytes(code, b"", None)

            def _send_bytes(self, status: int, payload: bytes, content_type: str | None,
                            allow: str | None = None) -> None:
                self.connection.settimeout(WRITE_TIMEOUT_S)
                self.close_connection = True
                self.send_response(status)
                if content_type is not None:
                    self.send_header("Content-Type", content_type)
                if allow is not None:
                    self.send_header("Allow", allow)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("health request: " + format, *args)

        return Handler
