"""Least privilege (issue 5): the roles migration 0002 sets up, proven against PostgreSQL.

- audit_writer (the daemon) cannot change or remove anything already written, even
  when the append-only triggers are disabled: the privileges alone refuse it;
- audit_reader (verify, export, status, reconcile) cannot write anything but the log of
  its reconcile runs (0003);
- the daemon really runs end to end as a login role granted audit_writer, and the
  read-only commands (verify, export, status, rejects, reconcile) work as one granted
  audit_reader;
- migrations run as a non-superuser member of audit_owner, which ends up owning the schema.

Roles are cluster-wide: each test creates its own login roles and drops them afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from support import chain_of, encode, produce, rejections, run_until_idle, scalar, wire_event
from tree_support import ORIGIN, chain_with_checkpoints

from audit_service.cli import main
from audit_service.config import Settings
from audit_service.core.events import ValidationLimits
from audit_service.core.messages import ConsumedMessage
from audit_service.core.signed_note import generate_signer
from audit_service.ingest.batch import commit_batch
from audit_service.storage.migrations import alembic_config, upgrade_to_head

CLI_TIMEOUT_S = 60.0
INSUFFICIENT_PRIVILEGE = "42501"
AUDIT_TABLES = ("audit_records", "audit_rejected_events", "audit_verification_log",
                "audit_chain_state", "audit_consumer_offsets", "alembic_version")

LoginRole = Callable[..., str]
"""Creates a login role (options such as "IN ROLE audit_writer") and returns a URL for it
on the given database URL."""


def _admin(admin_url: str, *statements: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


@pytest.fixture
def login_role(pg_admin_url: str) -> Iterator[LoginRole]:
    created: list[str] = []

    def create(database_url: str, options: str) -> str:
        name = f"audit_t_{uuid.uuid4().hex[:10]}"
        password = secrets.token_urlsafe(16)
        _admin(pg_admin_url, f"CREATE ROLE {name} LOGIN PASSWORD '{password}' {options}")
        created.append(name)
        return make_url(database_url).set(username=name, password=password).render_as_string(
            hide_password=False)

    yield create
    for name in created:
        _admin(pg_admin_url, f"DROP ROLE IF EXISTS {name}")


def _refused(url: str, statements: list[str]) -> list[str]:
    """The statements PostgreSQL executed instead of refusing for lack of privilege."""
    allowed = []
    engine = create_engine(url)
    try:
        for statement in statements:
            with engine.connect() as connection:
                try:
                    connection.execute(text(statement))
                except DBAPIError as exc:
                    if getattr(exc.orig, "pgcode", None) != INSUFFICIENT_PRIVILEGE:
                        raise
                    continue
                finally:
                    connection.rollback()
            allowed.append(statement)
    finally:
        engine.dispose()
    return allowed


def _changes_to(table: str) -> list[str]:
    return [f"UPDATE {table} SET tenant_id = tenant_id", f"DELETE FROM {table}",
            f"TRUNCATE {table}", f"ALTER TABLE {table} DISABLE TRIGGER ALL",
            f"DROP TABLE {table}"]


def test_the_writer_cannot_change_or_remove_history_even_with_the_triggers_disabled(
    database_url: str, login_role: LoginRole,
) -> None:
    writer = login_role(database_url, "IN ROLE audit_writer")
    # What a careless owner or an attacker with owner rights might do first: without the
    # triggers only the privileges stand between the writer and the records.
    _admin(database_url, *(f"ALTER TABLE {table} DISABLE TRIGGER USER"
                           for table in ("audit_records", "audit_rejected_events")))
    attempts = [
        *_changes_to("audit_records"),
        *_changes_to("audit_rejected_events"),
        *_changes_to("audit_verification_log"),
        "DELETE FROM audit_chain_state", "TRUNCATE audit_chain_state",
        "DELETE FROM audit_consumer_offsets", "TRUNCATE audit_consumer_offsets",
        "UPDATE alembic_version SET version_num = '0001'",
        "SELECT raw_value FROM audit_rejected_events",  # quarantined payloads are not its to read
        "SELECT * FROM audit_verification_log",
        "SET session_replication_role = replica",  # the other way around the triggers
        "CREATE TABLE audit_records_copy (id int)",
        "ALTER FUNCTION audit_reject_modification() RENAME TO nothing",
    ]
    assert _refused(writer, attempts) == []


def test_the_reader_cannot_write_anything(database_url: str, login_role: LoginRole) -> None:
    reader = login_role(database_url, "IN ROLE audit_reader")
    column = {"audit_consumer_offsets": "topic", "alembic_version": "version_num"}
    attempts = [statement for table in AUDIT_TABLES for statement in (
        f"INSERT INTO {table} DEFAULT VALUES",
        f"UPDATE {table} SET {column.get(table, 'tenant_id')} = NULL",
        f"DELETE FROM {table}", f"TRUNCATE {table}", f"SELECT * FROM {table} FOR UPDATE",
        f"ALTER TABLE {table} DISABLE TRIGGER ALL",
    )]
    attempts += [
        "SELECT nextval('audit_rejected_events_id_seq')",
        "SELECT nextval('audit_verification_log_id_seq')",
        "CREATE TABLE audit_notes (id int)",
        "SET session_replication_role = replica",
    ]
    assert _refused(reader, attempts) == []
    engine = create_engine(reader)
    try:
        with engine.connect() as connection:
            for table in AUDIT_TABLES:
                connection.execute(text(f"SELECT * FROM {table} LIMIT 1")).all()
    finally:
        engine.dispose()


def _cli(args: list[str], database_url: str, workdir: Path,
         **environ: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUDIT_")}
    env.update(AUDIT_DATABASE_URL=database_url, **environ)
    return subprocess.run([sys.executable, "-m", "audit_service", *args], env=env, cwd=workdir,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)


def test_the_daemon_runs_as_the_writer_and_the_auditor_verifies_and_exports(
    settings: Settings, kafka_bootstrap: str, topic: str, login_role: LoginRole,
    tmp_path: Path,
) -> None:
    writer = login_role(settings.database_url, "IN ROLE audit_writer")
    auditor = login_role(settings.database_url, "IN ROLE audit_reader")
    events = [wire_event("tenant-a") for _ in range(3)] + [wire_event("tenant-b")]
    # Every write path: genesis, chaining, a redelivery, a conflict, a rejected message
    # and a row only PostgreSQL refuses (the savepoint path).
    messages = [encode(event) for event in events]
    messages += [encode(events[0]), encode({**events[1], "actor_id": "someone-else"}),
                 (b"tenant-a", b"not json"),
                 encode(wire_event("tenant-a", actor_id=secrets.token_hex(6000)))]
    produce(kafka_bootstrap, topic, messages, partition=0)

    totals = run_until_idle(settings.model_copy(update={"database_url": writer}))

    assert (totals.chained, totals.duplicates, totals.rejected) == (4, 1, 3)
    assert [r["audit_id"] for r in chain_of(settings.database_url, "tenant-a")[1:]] == [
        event["audit_id"] for event in events[:3]]
    assert len(rejections(settings.database_url)) == 3

    export = _cli(["export", "--tenant", "tenant-a", "--output", "-"], auditor, tmp_path)
    assert export.returncode == 0, export.stderr
    assert [json.loads(line)["sequence_number"] for line in export.stdout.splitlines()] == [
        0, 1, 2, 3]

    status = _cli(["status", "--json"], auditor, tmp_path,
                  AUDIT_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, AUDIT_KAFKA_TOPIC=topic,
                  AUDIT_CONSUMER_GROUP=settings.consumer_group)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["rejected_events"] == 3

    listed = _cli(["rejects", "list"], auditor, tmp_path)
    assert listed.returncode == 0, listed.stderr

    # The writer may record verification runs (a verify timer may run as the writer).
    verify = _cli(["verify"], writer, tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verify: OK, 2 chains, 6 records intact" in verify.stdout
    assert scalar(settings.database_url, "SELECT count(*) FROM audit_verification_log") == 2


def test_reconcile_runs_as_the_auditor_and_records_its_run(
    settings: Settings, kafka_bootstrap: str, topic: str, login_role: LoginRole,
    tmp_path: Path,
) -> None:
    produce(kafka_bootstrap, topic, [encode(wire_event("tenant-a")), (b"tenant-a", b"x")],
            partition=0)
    assert run_until_idle(settings).rejected == 1
    writer = login_role(settings.database_url, "IN ROLE audit_writer")
    auditor = login_role(settings.database_url, "IN ROLE audit_reader")
    broker = {"AUDIT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "AUDIT_KAFKA_TOPIC": topic,
              "AUDIT_CONSUMER_GROUP": settings.consumer_group}

    run = _cli(["reconcile"], auditor, tmp_path, **broker)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 messages accounted for (1 chained, 1 rejected" in run.stderr + run.stdout
    assert scalar(settings.database_url, "SELECT count(*) FROM audit_reconciliation_log") == 1

    # The writer cannot read the quarantined bytes reconcile compares: one clear line.
    refused = _cli(["reconcile"], writer, tmp_path, **broker)
    assert refused.returncode == 2
    assert "run it as a member of audit_reader" in refused.stderr
    # It may read the runs for /metrics, not their finding details (message content).
    assert _refused(writer, ["SELECT id, findings, finished_at, ok, error "
                             "FROM audit_reconciliation_log"]) == [
        "SELECT id, findings, finished_at, ok, error FROM audit_reconciliation_log"]
    assert _refused(writer, ["SELECT finding_details FROM audit_reconciliation_log",
                             "INSERT INTO audit_reconciliation_log DEFAULT VALUES",
                             "DELETE FROM audit_reconciliation_log"]) == []
    assert _refused(auditor, ["UPDATE audit_reconciliation_log SET ok = true",
                              "DELETE FROM audit_reconciliation_log"]) == []


def _chain_directly(database_url: str, tenants: list[str]) -> None:
    """Chain one event per tenant with the batch function itself (no broker needed)."""
    messages = [ConsumedMessage("audit.events", 0, offset, *encode(wire_event(tenant)))
                for offset, tenant in enumerate(tenants)]
    engine = create_engine(database_url)
    try:
        commit_batch(engine, messages, "audit-test", ValidationLimits())
    finally:
        engine.dispose()


def test_verify_works_as_the_read_only_auditor(
    database_url: str, login_role: LoginRole, tmp_path: Path,
) -> None:
    _chain_directly(database_url, ["tenant-a", "tenant-b"])
    auditor = login_role(database_url, "IN ROLE audit_reader")

    verify = _cli(["verify"], auditor, tmp_path)

    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verify: OK, 2 chains, 4 records intact" in verify.stdout
    assert scalar(database_url, "SELECT count(*) FROM audit_verification_log") == 0


def test_prove_works_as_the_read_only_auditor(
    database_url: str, login_role: LoginRole,
) -> None:
    chain_with_checkpoints(database_url, generate_signer(ORIGIN), "tenant-a", [300])
    auditor = {"AUDIT_DATABASE_URL": login_role(database_url, "IN ROLE audit_reader")}

    inclusion = CliRunner().invoke(
        main, ["prove", "inclusion", "--tenant", "tenant-a", "--sequence", "7"], env=auditor)
    consistency = CliRunner().invoke(
        main, ["prove", "consistency", "--tenant", "tenant-a", "--from-size", "301"],
        env=auditor)

    assert inclusion.exit_code == 0, inclusion.output
    assert json.loads(inclusion.stdout)["tree_size"] == 301
    assert consistency.exit_code == 0, consistency.output
    assert json.loads(consistency.stdout)["consistency_proof"] == []


def test_migrations_run_as_a_non_superuser_member_of_audit_owner(
    pg_admin_url: str, login_role: LoginRole,
) -> None:
    database = f"audit_owned_{uuid.uuid4().hex[:12]}"
    database_url = make_url(pg_admin_url).set(database=database).render_as_string(
        hide_password=False)
    owner = login_role(database_url, "NOSUPERUSER NOCREATEROLE NOCREATEDB IN ROLE audit_owner")
    _admin(pg_admin_url, f'CREATE DATABASE "{database}" OWNER {make_url(owner).username}')
    try:
        upgrade_to_head(owner)
        owners = scalar(database_url, "SELECT array_agg(DISTINCT tableowner::text) FROM "
                        "pg_tables WHERE tablename = ANY(:tables)", tables=list(AUDIT_TABLES))
        assert owners == ["audit_owner"]
        assert scalar(database_url, "SELECT has_table_privilege('audit_writer', "
                      "'audit_records', 'INSERT')")

        command.downgrade(alembic_config(owner), "base")
        assert scalar(database_url, "SELECT count(*) FROM pg_tables WHERE tablename = "
                      "ANY(:tables)", tables=list(AUDIT_TABLES)) == 1  # alembic_version
        upgrade_to_head(owner)
    finally:
        _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_a_migrating_user_that_cannot_become_audit_owner_still_grants_the_roles(
    pg_admin_url: str, login_role: LoginRole,
) -> None:
    database = f"audit_plain_{uuid.uuid4().hex[:12]}"
    database_url = make_url(pg_admin_url).set(database=database).render_as_string(
        hide_password=False)
    deployer = login_role(database_url, "NOSUPERUSER NOCREATEROLE NOCREATEDB")
    name = make_url(deployer).username
    _admin(pg_admin_url, f'CREATE DATABASE "{database}" OWNER {name}')
    try:
        upgrade_to_head(deployer)
        owners = scalar(database_url, "SELECT array_agg(DISTINCT tableowner::text) FROM "
                        "pg_tables WHERE tablename = ANY(:tables)", tables=list(AUDIT_TABLES))
        assert owners == [name]
        assert scalar(database_url, "SELECT has_table_privilege('audit_reader', "
                      "'audit_records', 'SELECT') AND NOT has_table_privilege('audit_writer', "
                      "'audit_records', 'UPDATE')")
    finally:
        _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
