"""`audit-service run` as a subprocess that acceptance tests probe while it runs.

Every wait is bounded; the `daemon_processes` users kill whatever they started in teardown.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import TypeVar

import pytest

STOP_TIMEOUT_S = 10.0
"""SPEC 5: SIGTERM exits 0 within ~10 s."""
CLI_TIMEOUT_S = 60.0
"""A short command; check-config alone may wait 10 s for an unreachable broker."""
HTTP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.05
LOG_TAIL_CHARS = 3000

T = TypeVar("T")


def cli_environ(**environ: str) -> dict[str, str]:
    """The caller's environment without AUDIT_* (those would leak into the run), plus these."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUDIT_")}
    env.update(environ)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A short CLI command to completion, bounded in time."""
    return subprocess.run([sys.executable, "-m", "audit_service", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)


class RunningDaemon:
    """One `audit-service run` subprocess; stdout and stderr go to a log file."""

    def __init__(self, env: dict[str, str], log_path: Path, cwd: Path):
        self.log_path = log_path
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "audit_service", "run"], env=env, cwd=cwd,
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """SIGTERM and the exit code; fails the test if it does not exit in time."""
        self.process.terminate()
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daemon still running {STOP_TIMEOUT_S}s after SIGTERM\n{self.tail()}")

    def kill(self) -> None:
        if self.running():
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self) -> str:
        return f"--- {self.log_path.name}\n{self.output()[-LOG_TAIL_CHARS:]}"

    def wait_for(self, probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """Poll `probe` until it returns a value; fail if the daemon exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = probe()
            if value is not None:
                return value
            if not self.running():
                pytest.fail(f"daemon exited ({self.process.returncode}) while waiting for "
                            f"{what}\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{self.tail()}")
            time.sleep(POLL_INTERVAL_S)


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
