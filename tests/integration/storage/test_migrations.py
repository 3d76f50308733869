"""Alembic owns the schema: upgrades are idempotent and match the ORM models exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from audit_service.core.errors import SchemaNotCurrentError
from audit_service.storage.migrations import (
    ensure_schema_current,
    head_revision,
    scripts_dir,
    upgrade_to_head,
)
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
        # Storage options autogenerate does not compare: the models' fillfactor is the DDL's.
        options = connection.execute(text(
            "SELECT reloptions FROM pg_class WHERE relname = 'audit_chain_state'")).scalar()
        model = Base.metadata.tables["audit_chain_state"].dialect_options["postgresql"]["with"]
        assert options == [f"{key}={value}" for key, value in model.items()] == ["fillfactor=50"]
    engine.dispose()


def test_an_unmigrated_database_is_refused(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    with engine.connect() as connection, pytest.raises(SchemaNotCurrentError, match="migrate"):
        ensure_schema_current(connection)
    engine.dispose()


REPO = Path(__file__).resolve().parents[3]
ALEMBIC_TIMEOUT_S = 60.0


def test_a_checkout_migrates_from_its_top_level_alembic_folder() -> None:
    """The editable install `make test` uses has no copy: the scripts are the checkout's."""
    assert scripts_dir() == REPO / "alembic"
    assert not (REPO / "alembic" / "__init__.py").exists(), "it would shadow the library"


def test_alembic_itself_upgrades_from_the_repository_root(empty_database_url: str) -> None:
    """`python -m alembic -c audit.ini upgrade head` in the checkout: audit.ini's [alembic]
    section names alembic/, env.py takes the URL from the same settings (here a plain
    postgresql:// in AUDIT_DATABASE_URL), and the top-level alembic/ folder, first on
    sys.path, does not shadow the Alembic library."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUDIT_")}
    env["AUDIT_DATABASE_URL"] = "postgresql://" + empty_database_url.partition("://")[2]
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", "audit.ini", "upgrade", "head"], env=env,
        cwd=REPO, capture_output=True, text=True, timeout=ALEMBIC_TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    engine = create_engine(empty_database_url)
    try:
        with engine.connect() as connection:
            ensure_schema_current(connection)
    finally:
        engine.dispose()
