"""Database faults on a live stream (issue 5): connections terminated, a statement timeout,
and PostgreSQL down for 30 s. The daemon keeps running, /ready reports the outage and
recovers, and the stream resumes without skipping: every event chained or rejected once.

The module runs its own PostgreSQL (it is stopped and disconnected); the broker is the
session's.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from support import (
    ServiceProcesses,
    StreamProducer,
    assert_each_exactly_once,
    chained_at_least,
    fault_settings,
    http_status,
    scratch_dir,
    service_processes,
    verify_ok,
)

from audit_service.dev.devstack import EmbeddedPostgres, create_topic, free_port
from audit_service.storage.migrations import upgrade_to_head

pytestmark = pytest.mark.slow

OUTAGE_S = 30.0
"""Issue 5: the database unreachable for 30 s."""
READY_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 60.0
TERMINATIONS = 3
BATCH_WAIT_S = 5.0
"""Bound on waiting for a batch transaction to be open, to terminate it."""
STATEMENT_TIMEOUT_MS = 1000
STATEMENT_TIMEOUT = "canceling statement due to statement timeout"
LOCK_HOLD_TIMEOUT_S = 15.0
"""Bound on holding every head until a batch waiting for them hits the statement timeout."""


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server this module may stop, restart and disconnect at will."""
    with scratch_dir("audit-faults-pg-") as path:
        server = EmbeddedPostgres.start(path / "pg")
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def own_database_url(own_postgres: EmbeddedPostgres) -> str:
    """A fresh, migrated database on the module's own server."""
    name = f"audit_fault_{uuid.uuid4().hex[:10]}"
    own_postgres.create_database(name)
    url = own_postgres.url(name)
    upgrade_to_head(url)
    return url


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[ServiceProcesses]:
    yield from service_processes(tmp_path)


def _new_topic(bootstrap: str) -> str:
    topic = f"audit.events.db-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=4)
    return topic


def _status_is(port: int, path: str, status: int) -> Callable[[], bool | None]:
    return lambda: True if http_status(port, path) == status else None


def _terminate_mid_batch(database_url: str) -> int:
    """pg_terminate_backend the daemon's connection while a batch transaction is open on it
    (an idle pooled connection would just be replaced by the pool's pre-ping)."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")  # fresh stats per query
    deadline = time.monotonic() + BATCH_WAIT_S
    try:
        with engine.connect() as connection:
            while time.monotonic() < deadline:
                terminated = int(connection.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'audit-service' "
                    "AND xact_start IS NOT NULL AND state <> 'idle'")).scalar_one())
                if terminated:
                    return terminated
    finally:
        engine.dispose()
    return 0


def test_terminated_connections_and_a_statement_timeout_are_retried_without_skipping(
    own_database_url: str, kafka_bootstrap: str, daemons: ServiceProcesses, tmp_path: Path,
) -> None:
    topic = _new_topic(kafka_bootstrap)
    settings = fault_settings(own_database_url, kafka_bootstrap, topic)
    stream = StreamProducer(kafka_bootstrap, topic, [f"tenant-db-{i}" for i in range(6)],
                            total=6000, duration_s=10.0, reject_every=97)
    # No lock timeout: a lock wait now ends as a statement timeout (SQLSTATE 57014).
    daemon = daemons.start(settings, AUDIT_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS),
                           AUDIT_LOCK_TIMEOUT_MS="0")
    stream.start()
    daemon.wait_for(chained_at_least(own_database_url, 1), READY_TIMEOUT_S, "first records")

    terminated = []
    for _ in range(TERMINATIONS):
        terminated.append(_terminate_mid_batch(own_database_url))
        time.sleep(0.5)
    assert all(terminated), f"no batch transaction seen open: {terminated}"

    engine = create_engine(own_database_url)
    try:
        with engine.begin() as connection:  # every tenant's head, as another instance would
            connection.execute(text("SELECT tenant_id FROM audit_chain_state FOR UPDATE"))
            daemon.wait_for(lambda: True if STATEMENT_TIMEOUT in daemon.output() else None,
                            LOCK_HOLD_TIMEOUT_S, "a batch cancelled by the statement timeout")
    finally:
        engine.dispose()

    stream.finish()
    daemon.wait_for(chained_at_least(own_database_url, stream.valid), DRAIN_TIMEOUT_S,
                    "the whole stream")
    assert daemon.stop() == 0, daemon.tail()
    output = daemon.output()
    assert re.search(r"batch failed, will retry error='.*(server closed the connection "
                     r"unexpectedly|terminating connection|connection already closed)",
                     output), daemon.tail()

    tally = assert_each_exactly_once(own_database_url, stream.produced, stream.rejected)
    verify_ok(own_database_url, tmp_path)
    print(f"SCENARIO pg_terminate_backend x{TERMINATIONS} + statement timeout: "
          f"{tally.summary()} (terminated {terminated})")


def test_the_database_down_for_30_s_flips_ready_and_the_stream_resumes_without_skipping(
    own_postgres: EmbeddedPostgres, own_database_url: str, kafka_bootstrap: str,
    daemons: ServiceProcesses, tmp_path: Path,
) -> None:
    topic = _new_topic(kafka_bootstrap)
    settings = fault_settings(own_database_url, kafka_bootstrap, topic)
    port = free_port()
    stream = StreamProducer(kafka_bootstrap, topic, [f"tenant-down-{i}" for i in range(6)],
                            total=8000, duration_s=OUTAGE_S + 6, reject_every=89)
    daemon = daemons.start(settings, AUDIT_HEALTH_PORT=str(port))
    stream.start()
    daemon.wait_for(_status_is(port, "/ready", 200), READY_TIMEOUT_S, "/ready 200")
    daemon.wait_for(chained_at_least(own_database_url, 500), READY_TIMEOUT_S, "progress")

    own_postgres.stop()
    down_at = time.monotonic()
    daemon.wait_for(_status_is(port, "/ready", 503), 10.0, "/ready 503 while the database is down")
    while time.monotonic() - down_at < OUTAGE_S:
        assert daemon.running(), daemon.tail()
        assert http_status(port, "/health") == 200, "the loop must keep turning"
        time.sleep(1.0)
    own_postgres.restart()
    daemon.wait_for(_status_is(port, "/ready", 200), READY_TIMEOUT_S, "/ready 200 again")

    stream.finish()
    daemon.wait_for(chained_at_least(own_database_url, stream.valid), DRAIN_TIMEOUT_S,
                    "the whole stream")
    assert daemon.stop() == 0, daemon.tail()
    assert "batch failed, will retry" in daemon.output(), daemon.tail()

    tally = assert_each_exactly_once(own_database_url, stream.produced, stream.rejected)
    verify_ok(own_database_url, tmp_path)
    print(f"SCENARIO PostgreSQL down {OUTAGE_S:.0f}s: {tally.summary()}")
