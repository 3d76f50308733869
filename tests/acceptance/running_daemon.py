"""Short `audit-service` commands and probes of a running daemon's health server, for the
acceptance tests (the daemon itself is a support.ServiceProcess).

Every wait is bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path

CLI_TIMEOUT_S = 60.0
"""A short command; check-config alone may wait 10 s for an unreachable broker."""
HTTP_TIMEOUT_S = 5.0


def cli_environ(**environ: str) -> dict[str, str]:
    """The caller's environment without AUDIT_* (those would leak into the run), plus these."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUDIT_")}
    env.update(environ)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A short CLI command to completion, bounded in time."""
    return subprocess.run([sys.executable, "-m", "audit_service", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)


def http_get(port: int, path: str) -> tuple[int, Message, bytes]:
    """(status, headers, body) of one GET to the health server."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def answering(port: int, path: str, status: int = 200) -> Callable[[], bytes | None]:
    """A probe: the body once `path` answers `status` (None while it does not, or cannot)."""
    def probe() -> bytes | None:
        try:
            got, _, body = http_get(port, path)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        return body if got == status else None

    return probe
