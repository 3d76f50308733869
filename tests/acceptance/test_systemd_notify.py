"""Acceptance: `audit-service run` under a fake systemd, and the unit files in deploy/.

The daemon runs as a subprocess with NOTIFY_SOCKET pointing at a datagram socket the test
listens on, exactly as systemd's Type=notify passes it. Its stderr is a file, not a
terminal, so its logs must be JSON lines by default. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import encode, produce, wire_event

from audit_service.config import Settings
from audit_service.dev.devstack import free_port

READY_TIMEOUT_S = 30.0
"""Process start + first consumer-group join (~3 s here), with a wide margin."""
STOP_TIMEOUT_S = 10.0
"""SPEC 5: SIGTERM exits 0 within ~10 s."""
WATCHDOG_USEC = 400_000
"""A short WatchdogSec, so pings (every half interval) arrive within a second or two."""
HTTP_TIMEOUT_S = 5.0
REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """What systemd listens on (short path: AF_UNIX paths are limited to ~107 bytes)."""
    directory = tempfile.mkdtemp(prefix="notify-")
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory)


def _receive_until(sock: socket.socket, wanted: str, timeout_s: float,
                   process: subprocess.Popen[bytes], log_path: Path) -> list[str]:
    """Datagrams received up to and including `wanted`; fails on timeout or early exit."""
    received: list[str] = []
    deadline = time.monotonic() + timeout_s
    while wanted not in received:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            pytest.fail(f"no {wanted} within {timeout_s}s (exit {process.poll()}), "
                        f"got {received}\n{log_path.read_text(errors='replace')[-3000:]}")
        sock.settimeout(min(remaining, 0.5))
        try:
            received.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return received


def _ready(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=HTTP_TIMEOUT_S) as r:
        assert r.status == 200
        return json.loads(r.read())


def test_run_notifies_ready_watchdog_stopping_and_logs_json_lines(
    settings: Settings, kafka_bootstrap: str, topic: str, tmp_path: Path,
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, socket_path = notify_socket
    valid = wire_event("tenant-notify")
    produce(kafka_bootstrap, topic, [encode(valid), (b"tenant-notify", b'{"secret-payload": ')])
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUDIT_")}
    env.update({
        "NOTIFY_SOCKET": socket_path,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "AUDIT_DATABASE_URL": settings.database_url,
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "AUDIT_KAFKA_TOPIC": topic,
        "AUDIT_CONSUMER_GROUP": settings.consumer_group,
        "AUDIT_HEALTH_PORT": str(port),
        "AUDIT_POLL_TIMEOUT_MS": "200",
        "AUDIT_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "AUDIT_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "AUDIT_KAFKA_MAX_POLL_INTERVAL_MS": "10000",
    })
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "audit_service", "run"], env=env, cwd=tmp_path,
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        before_ready = _receive_until(sock, "READY=1", READY_TIMEOUT_S, process, log_path)
        # READY=1 means joined and connected: /ready agrees at that moment.
        ready = _ready(port)
        assert ready["database"] == "ok" and ready["assigned_partitions"], ready
        pings = [_receive_until(sock, "WATCHDOG=1", 5.0, process, log_path) for _ in range(2)]
        process.send_signal(signal.SIGTERM)
        at_stop = _receive_until(sock, "STOPPING=1", STOP_TIMEOUT_S, process, log_path)
        assert process.wait(timeout=STOP_TIMEOUT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    messages = before_ready + [m for batch in pings for m in batch] + at_stop
    assert messages.count("READY=1") == 1, messages
    assert set(messages) == {"READY=1", "WATCHDOG=1", "STOPPING=1"}, messages

    text = log_path.read_text()
    assert "secret-payload" not in text, "an event payload reached the logs"
    entries = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    by_message = {entry["message"]: entry for entry in entries}
    assert {"ready", "batch committed", "audit-service stopped"} <= set(by_message)
    rejected = by_message["event rejected"]
    assert {"tenant_id", "audit_id", "partition", "offset"} <= set(rejected), rejected
    assert rejected["kind"] == "json"


def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    installed = "/opt/audit-service/venv/bin/audit-service"  # docs/operations.md, Install
    here = str(Path(sys.executable).parent / "audit-service")
    units = []
    for source in sorted((REPOSITORY / "deploy").iterdir()):
        if source.suffix not in {".service", ".timer"}:
            continue
        text = source.read_text()
        if source.suffix == ".service":
            assert f"ExecStart={installed} " in text, source.name
        # verify checks that ExecStart exists: point it at this checkout's venv.
        (tmp_path / source.name).write_text(text.replace(installed, here))
        units.append(str(tmp_path / source.name))
    assert len(units) == 5, units

    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True,
                            timeout=60, check=False)

    assert (result.returncode, result.stdout + result.stderr) == (0, "")
