"""sd_notify over a real Unix datagram socket, as systemd listens for it."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_service.ops.notify import SystemdNotifier

RECEIVE_TIMEOUT_S = 2.0


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and its path (kept short: AF_UNIX paths max ~107 bytes)."""
    directory = tempfile.mkdtemp(prefix="notify-")
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(RECEIVE_TIMEOUT_S)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def _pending(sock: socket.socket) -> list[str]:
    """Every datagram already queued on the socket."""
    sock.setblocking(False)
    messages = []
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages
    finally:
        sock.settimeout(RECEIVE_TIMEOUT_S)


def test_ready_and_stopping_reach_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})

    notifier.ready()
    notifier.stopping()

    assert _pending(sock) == ["READY=1", "STOPPING=1"]


def test_abstract_namespace_socket() -> None:
    name = f"audit-service-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECEIVE_TIMEOUT_S)

        SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).ready()

        assert sock.recv(4096) == b"READY=1"


def test_watchdog_pings_at_half_the_interval(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    now = [100.0]
    notifier = SystemdNotifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())},
        clock=lambda: now[0],
    )

    sent = []
    for at in (100.0, 100.5, 100.99, 101.0, 101.2, 102.1):
        now[0] = at
        notifier.watchdog()
        sent.append(len(_pending(sock)))

    assert sent == [1, 0, 0, 1, 0, 1]


@pytest.mark.parametrize("environ", [
    {},  # WatchdogSec not set
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"},  # meant for another process
])
def test_no_watchdog_pings_unless_meant_for_this_process(
    notify_socket: tuple[socket.socket, str], environ: dict[str, str]
) -> None:
    sock, path = notify_socket

    SystemdNotifier({"NOTIFY_SOCKET": path, **environ}).watchdog()

    assert _pending(sock) == []


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = SystemdNotifier({"WATCHDOG_USEC": "1000000"})

    notifier.ready()
    notifier.watchdog()
    notifier.stopping()


def test_a_vanished_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})

    with caplog.at_level(logging.WARNING, logger="audit_service.ops.notify"):
        notifier.ready()

    [record] = caplog.records
    assert record.getMessage() == "cannot notify systemd"
    assert record.notify == "READY=1"
