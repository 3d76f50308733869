"""Alembic environment: same settings as the service, serialised by an advisory lock.

The database URL comes from `audit_service.config` (the CLI passes it in
`config.attributes`; plain `alembic -c audit.ini` loads it from that file and the
AUDIT_* environment), so there is no second URL to keep in sync.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from audit_service.config import load_settings
from audit_service.storage.models import Base

MIGRATION_LOCK_KEY = 0x41554449  # "AUDI": one migration at a time per database
LOCK_TIMEOUT = "30s"
STATEMENT_TIMEOUT = "10min"

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return str(url)
    return load_settings(config_path=config.config_file_name).database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(), target_metadata=target_metadata, literal_binds=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
        connection.execute(text(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'"))
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()
        try:
            context.configure(
                connection=connection, target_metadata=target_metadata, compare_type=True,
                transaction_per_migration=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
