"""Alembic owns the schema: upgrades are idempotent and match the ORM models exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from support import chain_of, scalar
from tree_support import ORIGIN, Reference, chain_with_checkpoints

from audit_service.core.errors import SchemaNotCurrentError
from audit_service.core.signed_note import generate_signer
from audit_service.storage.migrations import (
    alembic_config,
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


def _tree_nodes(database_url: str) -> list[tuple[str, int, int, bytes]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT tenant_id, level, node_index, hash FROM audit_tree_nodes "
                "ORDER BY tenant_id, level, node_index").all()
    finally:
        engine.dispose()
    return [(tenant, level, index, bytes(value)) for tenant, level, index, value in rows]


def test_0005_stores_the_tree_nodes_of_chains_written_before_it(database_url: str) -> None:
    signer = generate_signer(ORIGIN)
    chain_with_checkpoints(database_url, signer, "tenant-a", [300, 300])
    chain_with_checkpoints(database_url, signer, "tenant-b", [200])
    written = _tree_nodes(database_url)

    command.downgrade(alembic_config(database_url), "0004")
    assert scalar(database_url, "SELECT to_regclass('audit_tree_nodes')") is None
    upgrade_to_head(database_url)

    records = chain_of(database_url, "tenant-a")
    reference = Reference([bytes.fromhex(r["record_hash"]) for r in records])
    assert len(records) == 601
    assert _tree_nodes(database_url) == written == [
        ("tenant-a", 8, 0, reference.mth(0, 256)), ("tenant-a", 8, 1, reference.mth(256, 512))]
    assert scalar(database_url, (
        "SELECT has_table_privilege('audit_writer', 'audit_tree_nodes', 'SELECT, INSERT') "
        "AND NOT has_table_privilege('audit_writer', 'audit_tree_nodes', 'UPDATE') "
        "AND has_table_privilege('audit_reader', 'audit_tree_nodes', 'SELECT') "
        "AND NOT has_table_privilege('audit_reader', 'audit_tree_nodes', 'INSERT')"))
    engine = create_engine(database_url)
    try:
        for statement in ("UPDATE audit_tree_nodes SET hash = hash", "DELETE FROM audit_tree_nodes",
                          "TRUNCATE audit_tree_nodes"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text(statement))
    finally:
        engine.dispose()
