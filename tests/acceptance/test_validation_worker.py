"""Acceptance: the validation worker process of `audit-service run` (validation_pool).

The worker is a second process, so it adds two ways to fail that a single process does not
have: it can outlive its daemon (an orphan that holds memory and confuses supervisors), and
it can die while the daemon lives. Each daemon here is a real `python -m audit_service run`
with the default single worker, against the test's PostgreSQL database and Kafka topic; the
worker is found as the daemon's Python child process in /proc.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from process_tree import ChildProcess, kill_leftovers, python_children, wait_until_gone
from support import (
    PROCESS_STOP_TIMEOUT_S,
    ServiceProcess,
    ServiceProcesses,
    StreamProducer,
    assert_each_exactly_once,
    chained_at_least,
    fault_settings,
    produce_events,
    service_processes,
    verify_ok,
    wait_until,
    wire_event,
)

PROGRESS_TIMEOUT_S = 60.0
"""Process start, group join and the first commits, with a margin for a loaded machine."""
ORPHAN_TIMEOUT_S = 5.0
"""A worker checks every second that its daemon lives; 5 s leaves room for a busy machine."""
WORKER_DEATH_EXIT_S = 60.0
"""From the worker's death and new events to the daemon's exit (it notices at the next batch)."""
DRAIN_TIMEOUT_S = 90.0
SPAWN_WATCH_S = 0.002
"""How often the start-up test looks for the new worker: it must signal it well within the
second that a spawned Python takes to reach the worker's initializer."""
TENANTS = ["tenant-worker-a", "tenant-worker-b", "tenant-worker-c"]


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[ServiceProcesses]:
    yield from service_processes(tmp_path)


@pytest.fixture
def seen_children() -> Iterator[list[ChildProcess]]:
    """Every daemon child a test looked at; any still running afterwards is killed."""
    seen: list[ChildProcess] = []
    yield seen
    kill_leftovers(seen)


def _produce(bootstrap: str, topic: str, per_tenant: int,
             produced: dict[str, list[str]]) -> int:
    """`per_tenant` valid events for each tenant, recorded in `produced`; returns the count."""
    events = [wire_event(tenant) for _ in range(per_tenant) for tenant in TENANTS]
    for event in events:
        produced.setdefault(event["tenant_id"], []).append(event["audit_id"])
    return produce_events(bootstrap, topic, events)


def _workers_of(daemon: ServiceProcess, seen: list[ChildProcess]) -> list[ChildProcess]:
    """The daemon's Python children once a validation worker is among them (bounded wait;
    the daemon starts its worker before it joins the group)."""
    def probe() -> list[ChildProcess] | None:
        children = python_children(daemon.pid)
        return children if any(child.is_worker for child in children) else None

    children = wait_until(probe, PROGRESS_TIMEOUT_S, "a validation worker process", daemon)
    seen.extend(children)
    return children


def _describe(processes: list[ChildProcess]) -> str:
    return "; ".join(process.describe() for process in processes)


def test_kill_9_of_the_daemon_leaves_no_orphan_worker(
    database_url: str, kafka_bootstrap: str, topic: str, daemons: ServiceProcesses,
    seen_children: list[ChildProcess],
) -> None:
    """SIGKILL gives the daemon no chance to shut its pool down: the worker must notice on
    its own that its parent is gone and exit."""
    daemon = daemons.start(fault_settings(database_url, kafka_bootstrap, topic))
    count = _produce(kafka_bootstrap, topic, 10, {})
    daemon.wait_for(chained_at_least(database_url, count), PROGRESS_TIMEOUT_S,
                    "the first events chained")
    children = _workers_of(daemon, seen_children)

    daemon.signal(signal.SIGKILL)
    daemon.wait()

    left = wait_until_gone(children, ORPHAN_TIMEOUT_S)
    assert not left, (f"{len(left)} of the daemon's processes still run {ORPHAN_TIMEOUT_S}s "
                      f"after it was killed: {_describe(left)}")


def test_a_killed_worker_stops_the_daemon_with_exit_2_and_a_restart_loses_nothing(
    database_url: str, kafka_bootstrap: str, topic: str, daemons: ServiceProcesses,
    seen_children: list[ChildProcess], tmp_path: Path,
) -> None:
    """A daemon that cannot validate must not carry on (nor skip anything): it exits with
    the connection/configuration code so its supervisor restarts it, and the events it
    could not validate are chained, once each, by the next daemon."""
    settings = fault_settings(database_url, kafka_bootstrap, topic)
    produced: dict[str, list[str]] = {}
    daemon = daemons.start(settings)
    first = _produce(kafka_bootstrap, topic, 10, produced)
    daemon.wait_for(chained_at_least(database_url, first), PROGRESS_TIMEOUT_S,
                    "the first events chained")
    [worker] = [child for child in _workers_of(daemon, seen_children) if child.is_worker]

    os.kill(worker.pid, signal.SIGKILL)
    assert not wait_until_gone([worker], PROCESS_STOP_TIMEOUT_S), "the worker survived SIGKILL"
    _produce(kafka_bootstrap, topic, 10, produced)

    code = daemon.wait(WORKER_DEATH_EXIT_S)
    assert code == 2, f"exit {code}, expected 2\n{daemon.tail()}"
    assert "validation worker" in daemon.output(), daemon.tail()

    final = daemons.start(settings, "--exit-when-idle")
    assert final.wait(DRAIN_TIMEOUT_S) == 0, final.tail()
    tally = assert_each_exactly_once(database_url, produced)
    assert tally.produced == tally.chained == 2 * first
    verify_ok(database_url, tmp_path)


def test_sigterm_during_a_stream_exits_0_and_leaves_no_worker(
    database_url: str, kafka_bootstrap: str, topic: str, daemons: ServiceProcesses,
    seen_children: list[ChildProcess],
) -> None:
    """The worker ignores SIGTERM (the daemon decides when to stop): the daemon must shut
    its pool down on the way out, within the usual stop bound, while batches still flow."""
    daemon = daemons.start(fault_settings(database_url, kafka_bootstrap, topic))
    seed = _produce(kafka_bootstrap, topic, 2, {})
    daemon.wait_for(chained_at_least(database_url, seed), PROGRESS_TIMEOUT_S, "first events")
    children = _workers_of(daemon, seen_children)
    # Started only now, so the daemon's start and group join cannot use up the stream.
    stream = StreamProducer(kafka_bootstrap, topic, TENANTS, total=3000, duration_s=6.0,
                            chunk=50)
    stream.start()
    daemon.wait_for(chained_at_least(database_url, seed + 100), PROGRESS_TIMEOUT_S,
                    "the stream being chained")
    assert stream.is_alive(), "the stream ended before the signal; it must still be flowing"

    code = daemon.stop()

    assert code == 0, f"exit {code}\n{daemon.tail()}"
    left = wait_until_gone(children, ORPHAN_TIMEOUT_S)
    assert not left, f"still running after a clean stop: {_describe(left)}"
    stream.finish()


def test_a_stop_signal_in_the_workers_first_second_does_not_kill_it(
    database_url: str, kafka_bootstrap: str, topic: str, daemons: ServiceProcesses,
    seen_children: list[ChildProcess], tmp_path: Path,
) -> None:
    """Ctrl-C and `systemctl stop` signal every process of the group or cgroup, the worker
    included, and the worker only ignores SIGINT/SIGTERM once its initializer has run. A
    signal before that (here SIGTERM, sent the moment the worker exists) must not kill it:
    the daemon goes on chaining, and stops with 0 when it is signalled itself."""
    settings = fault_settings(database_url, kafka_bootstrap, topic)
    daemon = daemons.start(settings)

    def spawned_workers() -> list[ChildProcess] | None:
        return [child for child in python_children(daemon.pid) if child.is_worker] or None

    [worker] = wait_until(spawned_workers, PROGRESS_TIMEOUT_S, "the worker being spawned",
                          daemon, interval_s=SPAWN_WATCH_S)
    seen_children.append(worker)
    os.kill(worker.pid, signal.SIGTERM)

    produced: dict[str, list[str]] = {}
    count = _produce(kafka_bootstrap, topic, 10, produced)
    daemon.wait_for(chained_at_least(database_url, count), PROGRESS_TIMEOUT_S,
                    "events chained by the signalled worker")
    assert worker.alive(), "the worker died of a signal sent while it started"
    code = daemon.stop()
    assert code == 0, f"exit {code}\n{daemon.tail()}"
    assert_each_exactly_once(database_url, produced)
    verify_ok(database_url, tmp_path)
