"""Where a daemon run's memory and CPU went, read from /proc while it runs.

Peak RSS (VmHWM) of the daemon and of its children shows whether memory stays flat. CPU
time per event by role (the daemon, its validation worker, PostgreSQL, the broker) is the
profile that says what limits throughput on a machine whose cores are all busy: every role
shares the same two cores, so a role's microseconds per event are what it costs the others.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE_S = 0.2
"""Sampling period; processes that live shorter than this (none here) would be missed."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

DAEMON = "daemon"
CHILDREN = "validation worker"
POSTGRES = "postgres"
BROKER = "broker"
ROLES = (DAEMON, CHILDREN, POSTGRES, BROKER)


@dataclass(frozen=True)
class _Sample:
    comm: str
    parent: int
    cpu_s: float


def _read_stat(pid: int) -> _Sample | None:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return _Sample(stat[stat.index("(") + 1:stat.rindex(")")], int(fields[1]),
                   (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)


def _all_processes() -> dict[int, _Sample]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (sample := _read_stat(int(entry.name))) is not None:
            found[int(entry.name)] = sample
    return found


def _peak_kib(pid: int) -> int | None:
    """VmHWM (peak resident set) of a process, None once it is gone."""
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass
class Usage:
    peak_rss_mib: float
    """The daemon's own peak resident set."""
    children_peak_rss_mib: float
    """The sum of its descendants' peaks (the validation worker, multiprocessing's
    resource tracker; reconcile's fork server and its workers)."""
    cpu_s: dict[str, float]
    """CPU seconds (user + system) each role spent within the measured window."""
    window_s: float

    def cpu_us_per_event(self, events: int) -> dict[str, float]:
        return {role: seconds / events * 1e6 for role, seconds in self.cpu_s.items()}

    @property
    def cores_busy(self) -> float:
        """Average number of cores the roles kept busy within the window."""
        return sum(self.cpu_s.values()) / self.window_s if self.window_s else 0.0


class UsageSampler:
    """Samples a daemon (by pid), its children, PostgreSQL and the broker until the daemon
    exits. A process that exits in between (e.g. the daemon's PostgreSQL backend) keeps its
    last sampled CPU time."""

    def __init__(self, daemon_pid: int):
        self.daemon_pid = daemon_pid
        self._baseline = {pid: sample.cpu_s for pid, sample in _all_processes().items()}
        self._last: dict[int, tuple[str, float]] = {}
        self._series: list[tuple[float, dict[str, float]]] = []
        """(wall-clock time, CPU seconds per role since the start) at every sample."""
        self._peak_kib = 0
        self._children_peak_kib: dict[int, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _role(self, pid: int, sample: _Sample, processes: dict[int, _Sample]) -> str | None:
        if pid == self.daemon_pid:
            return DAEMON
        if self._descends(sample, processes):
            return CHILDREN
        if sample.comm.startswith("postgres"):
            return POSTGRES
        if "tansu" in sample.comm:
            return BROKER
        return None

    def _descends(self, sample: _Sample, processes: dict[int, _Sample]) -> bool:
        """A child, or a child's child (workers forked by a fork server)."""
        parent = sample.parent
        while parent > 1:
            if parent == self.daemon_pid:
                return True
            parent = processes[parent].parent if parent in processes else 0
        return False

    def _run(self) -> None:
        while (own := _peak_kib(self.daemon_pid)) is not None:
            self._peak_kib = max(self._peak_kib, own)
            processes = _all_processes()
            for pid, sample in processes.items():
                role = self._role(pid, sample, processes)
                if role is None:
                    continue
                self._last[pid] = (role, sample.cpu_s - self._baseline.get(pid, 0.0))
                if role == CHILDREN and (peak := _peak_kib(pid)) is not None:
                    self._children_peak_kib[pid] = max(self._children_peak_kib.get(pid, 0), peak)
            totals = dict.fromkeys(ROLES, 0.0)
            for role, seconds in self._last.values():
                totals[role] += seconds
            self._series.append((time.time(), totals))
            time.sleep(SAMPLE_S)

    def result(self, first: float, last: float) -> Usage:
        """Wait for the daemon's exit to be noticed; CPU spent between the samples around
        the wall-clock window [first, last] (e.g. the first and last record's ingested_at),
        which leaves out the daemon's start and its wait for the end of the stream."""
        self._thread.join(timeout=2 * SAMPLE_S + 5)
        before = [sample for sample in self._series if sample[0] <= first] or self._series[:1]
        after = [sample for sample in self._series if sample[0] >= last] or self._series[-1:]
        (started, at_start), (ended, at_end) = before[-1], after[0]
        cpu = {role: at_end[role] - at_start[role] for role in ROLES}
        return Usage(self._peak_kib / 1024, sum(self._children_peak_kib.values()) / 1024,
                     cpu, ended - started)
