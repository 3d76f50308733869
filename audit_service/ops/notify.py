"""systemd's notify protocol (sd_notify(3)): one datagram per state change to $NOTIFY_SOCKET.

A dozen lines instead of a dependency. Without NOTIFY_SOCKET (not started by systemd, or
in tests) every call does nothing, so the daemon needs no separate mode.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

WATCHDOG_PING_FRACTION = 0.5
"""Ping at half of WatchdogSec, as sd_watchdog_enabled(3) advises, so one late ping is safe."""


def _socket_address(value: str) -> str | None:
    """The socket path; a leading '@' names Linux's abstract namespace."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value if value.startswith("/") else None


def _watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """WatchdogSec as systemd passes it (WATCHDOG_USEC), if it is meant for this process."""
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


class SystemdNotifier:
    """Sends READY=1, WATCHDOG=1 and STOPPING=1 when running under a Type=notify unit."""

    def __init__(
        self, environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        environ = os.environ if environ is None else environ
        self._address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self._watchdog_interval_s = _watchdog_interval_s(environ)
        self._clock = clock
        self._last_watchdog = -math.inf

    def ready(self) -> None:
        self._send("READY=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """Tell systemd the loop is healthy; rate-limited, so it is cheap to call each turn."""
        if self._watchdog_interval_s is None:
            return
        now = self._clock()
        if now - self._last_watchdog < self._watchdog_interval_s * WATCHDOG_PING_FRACTION:
            return
        self._last_watchdog = now
        self._send("WATCHDOG=1")

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.connect(self._address)
                sock.sendall(message.encode())
            except OSError as exc:
                log.warning("cannot notify systemd", extra={"notify": message,
                            "error": exc.strerror or str(exc)})
