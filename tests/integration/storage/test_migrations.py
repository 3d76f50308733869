"""Alembic owns the schema: upgrades are idempotent and match the ORM models exactly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from audit_service.core.errors import SchemaNotCurrentError
from audit_service.storage.migrations import ensure_schema_current, head_revision, upgrade_to_head
from audit_service.storage.models import Base


def test_upgrade_of_an_empty_database_matches_the_models(empty_database_url: str) -> None:
    upgrade_to_head(empty_database_url)
    upgrade_to_head(empty_database_url)  # idempotent

    engine = create_engine(empty_database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert context.get_current_revision() == head_revision()
        assert compare_metadata(context, Base.metadata) == []
        ensure_schema_current(connection)
    engine.dispose()


def test_an_unmigrated_database_is_refused(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    with engine.connect() as connection, pytest.raises(SchemaNotCurrentError, match="migrate"):
        ensure_schema_current(connection)
    engine.dispose()
