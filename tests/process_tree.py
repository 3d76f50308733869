"""A process's Python children, read from /proc (Linux), to find validation workers and to
prove none outlives its daemon. Pure reads: nothing here waits for, reaps or signals a
process except `kill_leftovers`, which only targets processes a test listed."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

SPAWNED_WORKER_MARK = "multiprocessing.spawn"
"""In the command line of a process started by multiprocessing's spawn context (the
validation worker); the resource tracker beside it runs multiprocessing.resource_tracker."""


@dataclass(frozen=True)
class ChildProcess:
    pid: int
    start_ticks: int
    """Start time (field 22 of /proc/PID/stat): tells the process from a later one that
    reuses its pid."""
    cmdline: str

    @property
    def is_worker(self) -> bool:
        return SPAWNED_WORKER_MARK in self.cmdline

    def alive(self) -> bool:
        """Still running: exists, is the same process, and is not a zombie (an exited child
        of a dead daemon may wait for a reaper that never comes; it runs nothing)."""
        stat = _stat(self.pid)
        return stat is not None and stat[2] == self.start_ticks and stat[0] not in "ZX"

    def describe(self) -> str:
        return f"pid {self.pid}: {self.cmdline[:160]}"


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start ticks) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def python_children(parent: int) -> list[ChildProcess]:
    """Live Python processes whose parent is `parent` (anything else is ignored)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = _stat(pid)
        if stat is None or stat[1] != parent or stat[0] in "ZX":
            continue
        cmdline = _cmdline(pid)
        if cmdline and Path(cmdline.split(" ", 1)[0]).name.startswith("python"):
            found.append(ChildProcess(pid, stat[2], cmdline))
    return found


def wait_until_gone(processes: list[ChildProcess], timeout_s: float) -> list[ChildProcess]:
    """Wait (bounded) for every process to end; returns those still running at the end."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [process for process in processes if process.alive()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def kill_leftovers(processes: list[ChildProcess]) -> None:
    """Teardown: SIGKILL whichever of these processes still runs (a failed test's orphans)."""
    for process in processes:
        if process.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
