"""The health server itself, over real sockets: only GET on /health, /ready and /metrics
is served, errors are a bare status line, requests are capped in size, and connections
beyond the cap are refused at once. (The daemon under a slow-client attack is tested in
tests/acceptance/test_health_hardening.py.)
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import pytest

from audit_service.ops.health import MAX_REQUEST_BYTES, REQUEST_TIMEOUT_S, HealthServer, LoopState

METRICS = (b"audit_events_chained_total 3\n", "text/plain; version=0.0.4")


@pytest.fixture
def server() -> Iterator[HealthServer]:
    health = HealthServer("127.0.0.1", 0, LoopState(), 60.0, lambda: True, lambda: METRICS,
                          max_connections=4)
    health.start()
    yield health
    health.stop()


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        response = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                response += chunk
    return response


def _parts(response: bytes) -> tuple[bytes, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status.encode(), headers, body


@pytest.mark.parametrize(("path", "content_type", "body"), [
    ("/health", "application/json", {"status": "ok"}),
    ("/ready", "application/json", {"status": "not ready", "database": "ok"}),
    ("/metrics", METRICS[1], None),
    ("/health?verbose=1", "application/json", {"status": "ok"}),
])
def test_get_on_the_known_paths_is_served(
    server: HealthServer, path: str, content_type: str, body: dict[str, str] | None,
) -> None:
    status, headers, payload = _parts(
        _exchange(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
    assert status.startswith(b"HTTP/1.0 "), status
    assert headers["Content-Type"] == content_type
    assert headers["Server"] == "audit-service"
    if body is None:
        assert payload == METRICS[0]
    else:
        assert body.items() <= json.loads(payload).items()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"POST /health HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", b"405 Method Not Allowed"),
    (b"HEAD /health HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    (b"PUT /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405 Method Not Allowed"),
    (b"DELETE /ready HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    (b"OPTIONS * HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    (b"TRACE / HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    (b"GET / HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"GET /../../etc/passwd HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"GET /health/../admin HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"GET /<script>alert(1)</script> HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"GET /" + b"a" * MAX_REQUEST_BYTES + b" HTTP/1.1\r\n\r\n", b"414 Request-URI Too Long"),
    (b"GET /health HTTP/1.1\r\nX-Big: " + b"b" * MAX_REQUEST_BYTES + b"\r\n\r\n",
     b"431 Request Header Fields Too Large"),
    (b"GET /health HTTP/1.1\r\n" + b"X-Many: c\r\n" * 1000 + b"\r\n",
     b"431 Request Header Fields Too Large"),
    (b"GET /health HTTP/9.9\r\n\r\n", b"505 HTTP Version Not Supported"),
    (b"GET /health HTTP/1.1 extra\r\n\r\n", b"400 Bad Request"),
], ids=["post", "head", "put", "delete", "options", "trace", "root", "traversal",
        "dot-segments", "markup", "long-request-line", "long-header", "many-headers",
        "bad-version", "bad-syntax"])
def test_anything_else_gets_a_bare_status_line(
    server: HealthServer, request_bytes: bytes, status: bytes,
) -> None:
    got, headers, body = _parts(_exchange(server.port, request_bytes))
    assert got == b"HTTP/1.0 " + status
    assert body == b"", "an error echoes nothing back"
    assert headers["Content-Length"] == "0"
    assert headers["Server"] == "audit-service", "no Python version for scanners"
    if status.startswith(b"405"):
        assert headers["Allow"] == "GET"


def test_connections_beyond_the_cap_are_refused_at_once_and_slots_come_back(
    server: HealthServer,
) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    try:
        deadline = time.monotonic() + 2.0  # until the accept loop has caught up with them
        while True:
            started = time.monotonic()
            status, _, _ = _parts(_exchange(server.port, b"GET /health HTTP/1.1\r\n\r\n"))
            refused_in = time.monotonic() - started
            if status != b"HTTP/1.0 200 OK" or time.monotonic() > deadline:
                break
        assert status == b"HTTP/1.0 503 Service Unavailable"
        assert refused_in < 1.0
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while True:
        status, _, _ = _parts(_exchange(server.port, b"GET /health HTTP/1.1\r\n\r\n"))
        if status == b"HTTP/1.0 200 OK" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == b"HTTP/1.0 200 OK"


def test_a_client_dribbling_its_request_is_dropped_at_the_deadline(server: HealthServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        response = b""
        while time.monotonic() - started < REQUEST_TIMEOUT_S + 2:
            try:
                sock.send(b"G")
                sock.settimeout(0.2)
                response = sock.recv(100)
                break  # the server closed the connection (b"") or answered
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                break
        dropped_after = time.monotonic() - started
    assert response == b""
    assert REQUEST_TIMEOUT_S - 0.2 < dropped_after < REQUEST_TIMEOUT_S + 1.0
