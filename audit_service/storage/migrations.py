"""Run Alembic programmatically and check that a database is at the expected head."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from audit_service.core.errors import AuditServiceError, SchemaNotCurrentError

SCRIPTS_RESOURCE = "migration_scripts"
"""Where the wheel carries the top-level alembic/ folder: audit_service/migration_scripts
(pyproject.toml maps it there; the folder itself stays the single source)."""


@functools.cache
def scripts_dir() -> Path:
    """The Alembic scripts folder: inside the installed package (a wheel), or the
    checkout's alembic/ beside the package (an editable install or a source tree).

    The checkout is recognised by its pyproject.toml, so an installed package can never
    fall back to site-packages/alembic, which is the Alembic library itself.
    """
    packaged = resources.files("audit_service") / SCRIPTS_RESOURCE
    if packaged.is_dir() and (packaged / "env.py").is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "alembic" / "env.py").is_file():
        return checkout / "alembic"
    raise AuditServiceError(
        f"the migration scripts are missing from this installation (looked in {packaged} "
        f"and {checkout / 'alembic'}): reinstall audit-service"
    )


def alembic_config(database_url: str) -> Config:
    """An Alembic Config that needs no ini file; the URL travels in `attributes`."""
    config = Config()
    config.set_main_option("script_location", str(scripts_dir()))
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str) -> None:
    """Apply every pending migration (idempotent: at head it does nothing)."""
    command.upgrade(alembic_config(database_url), "head")


def head_revision() -> str:
    head = ScriptDirectory(str(scripts_dir())).get_current_head()
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
