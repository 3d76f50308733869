"""Run Alembic programmatically and check that a database is at the expected head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from audit_service.core.errors import SchemaNotCurrentError

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "alembic"
"""The repository's top-level alembic/ folder (the package is installed editable)."""


def alembic_config(database_url: str) -> Config:
    """An Alembic Config that needs no ini file; the URL travels in `attributes`."""
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str) -> None:
    """Apply every pending migration (idempotent: at head it does nothing)."""
    command.upgrade(alembic_config(database_url), "head")


def head_revision() -> str:
    head = ScriptDirectory(str(ALEMBIC_DIR)).get_current_head()
    if head is None:
        raise SchemaNotCurrentError("no Alembic migrations found")
    return head


def ensure_schema_current(connection: Connection) -> None:
    """Refuse to run against a database that is not migrated to this code's head."""
    current = MigrationContext.configure(connection).get_current_revision()
    expected = head_revision()
    if current != expected:
        raise SchemaNotCurrentError(
            f"database schema is at revision {current or 'none (empty database)'}, "
            f"this version needs {expected}: run `audit-service migrate` first"
        )
