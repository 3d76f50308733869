"""Acceptance: the health port cannot be used to stall or exhaust the daemon (issue 5).

While events flow, clients that connect and send nothing, clients that dribble a byte at a
time, and a burst beyond the connection cap hit the health server of a real `audit-service
run`. The daemon keeps chaining, /health keeps answering promptly, its thread count stays
bounded, and slow clients are dropped after REQUEST_TIMEOUT_S. (What is served and
how errors look is tested against the server itself in tests/integration.)
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Producer
from running_daemon import answering, cli_environ
from support import ServiceProcess, encode, scalar, wire_event

from audit_service.config import Settings
from audit_service.dev.devstack import free_port
from audit_service.ops.health import MAX_CONNECTIONS, REQUEST_TIMEOUT_S

READY_TIMEOUT_S = 30.0
PROBE_BOUND_S = 1.0
"""/health must answer within this while slow clients hold connections."""
DROP_SLACK_S = 1.5
"""Scheduling slack on top of REQUEST_TIMEOUT_S before a slow client must be gone."""
IDLE_CLIENTS = 50
DRIBBLERS = 10
BURST = 3 * MAX_CONNECTIONS
THREAD_SLACK = 8
"""Threads the daemon may start besides one per served connection (e.g. a kafka-python
connection thread)."""
PRODUCE_EVERY_S = 0.1


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line in /proc status")


def _chained(database_url: str) -> int:
    return int(scalar(database_url, "SELECT count(*) FROM audit_records WHERE sequence_number > 0"))


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _probe_health(port: int) -> tuple[float, bytes]:
    """(seconds, raw response) of GET /health on a fresh connection."""
    started = time.monotonic()
    with _connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: probe\r\n\r\n")
        response = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                response += chunk
    return time.monotonic() - started, response


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.fixture
def flowing_events(settings: Settings, kafka_bootstrap: str, topic: str) -> Iterator[None]:
    """A producer thread publishing a few events every PRODUCE_EVERY_S until teardown."""
    stop = threading.Event()

    def publish() -> None:
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
        while not stop.wait(PRODUCE_EVERY_S):
            for index in range(5):
                key, value = encode(wire_event(f"tenant-flow-{index}"))
                producer.produce(topic, key=key, value=value)
            producer.poll(0)
        producer.flush(10)

    thread = threading.Thread(target=publish, name="test-producer", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=15)


@dataclass(frozen=True)
class Target:
    daemon: ServiceProcess
    port: int


@pytest.fixture
def target(settings: Settings, flowing_events: None, tmp_path: Path) -> Iterator[Target]:
    """A daemon chaining the flowing events, its health server on `port`."""
    port = free_port()
    env = cli_environ(
        AUDIT_DATABASE_URL=settings.database_url,
        AUDIT_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        AUDIT_KAFKA_TOPIC=settings.kafka_topic, AUDIT_CONSUMER_GROUP=settings.consumer_group,
        AUDIT_HEALTH_PORT=str(port), AUDIT_POLL_TIMEOUT_MS="100", AUDIT_BATCH_SIZE="20",
        AUDIT_KAFKA_SESSION_TIMEOUT_MS="6000", AUDIT_KAFKA_HEARTBEAT_INTERVAL_MS="1000",
        AUDIT_KAFKA_MAX_POLL_INTERVAL_MS="10000")
    running = ServiceProcess([], env, tmp_path / "daemon.log", tmp_path)
    try:
        running.wait_for(answering(port, "/ready"), READY_TIMEOUT_S, "/ready to answer 200")
        running.wait_for(lambda: _chained(settings.database_url) or None, READY_TIMEOUT_S,
                         "events to be chained")
        yield Target(running, port)
    finally:
        running.kill()


def test_slow_clients_cannot_stall_the_daemon_or_grow_its_threads(
    target: Target, settings: Settings,
) -> None:
    daemon, port = target.daemon, target.port
    pid = daemon.process.pid
    baseline_threads = _threads(pid)
    chained_before = _chained(settings.database_url)
    attack_started = time.monotonic()

    idle = [_connect(port) for _ in range(IDLE_CLIENTS)]
    dribblers = [_connect(port) for _ in range(DRIBBLERS)]
    dropped_after: dict[socket.socket, float] = {}
    probes: list[tuple[float, bytes]] = []
    peak_threads = 0
    try:
        deadline = attack_started + REQUEST_TIMEOUT_S + DROP_SLACK_S
        while len(dropped_after) < len(idle) + len(dribblers) and time.monotonic() < deadline:
            for sock in idle + dribblers:
                if sock not in dropped_after and _closed_by_server(sock):
                    dropped_after[sock] = time.monotonic() - attack_started
            for sock in dribblers:
                if sock not in dropped_after:
                    with contextlib.suppress(OSError):
                        sock.send(b"G")  # a byte at a time, never a whole request line
            probes.append(_probe_health(port))
            peak_threads = max(peak_threads, _threads(pid))
            time.sleep(0.1)

        burst = [_connect(port) for _ in range(BURST)]
        peak_threads = max(peak_threads, _threads(pid))
        time.sleep(0.5)
        refused = len(select.select(burst, [], [], 0)[0])  # answered 503 and closed at once
        for sock in burst:
            sock.close()
    finally:
        for sock in idle + dribblers:
            sock.close()

    assert len(dropped_after) == IDLE_CLIENTS + DRIBBLERS, "slow clients still connected"
    assert max(dropped_after.values()) < REQUEST_TIMEOUT_S + DROP_SLACK_S
    slowest_probe = max(seconds for seconds, _ in probes)
    assert slowest_probe < PROBE_BOUND_S, probes
    assert all(response.startswith(b"HTTP/1.0 200 OK") for _, response in probes), probes
    assert peak_threads <= baseline_threads + MAX_CONNECTIONS + THREAD_SLACK, (
        baseline_threads, peak_threads)
    assert refused >= BURST - MAX_CONNECTIONS, "connections beyond the cap are refused at once"

    def recovered() -> bytes | None:
        _, response = _probe_health(port)
        return response if response.startswith(b"HTTP/1.0 200 OK") else None

    daemon.wait_for(recovered, REQUEST_TIMEOUT_S + DROP_SLACK_S, "/health after the burst")
    daemon.wait_for(lambda: _threads(pid) <= baseline_threads + THREAD_SLACK or None,
                    REQUEST_TIMEOUT_S + DROP_SLACK_S, "the connection threads to end")
    assert _chained(settings.database_url) > chained_before, "chaining went on throughout"

    held = [_connect(port) for _ in range(IDLE_CLIENTS)]  # they must not delay the stop
    try:
        stopping = time.monotonic()
        assert daemon.stop() == 0, daemon.tail()
        assert time.monotonic() - stopping < REQUEST_TIMEOUT_S + DROP_SLACK_S, daemon.tail()
    finally:
        for sock in held:
            sock.close()
    assert "Traceback" not in daemon.output(), daemon.tail()
