"""Least privilege: audit_owner owns the schema, audit_writer appends, audit_reader reads.

Three NOLOGIN group roles; operators create login roles and grant them one group each
(docs/operations.md, "Security"):
- audit_owner owns the tables, so only its members (whoever runs `migrate`) can alter
  them, drop their triggers or grant on them;
- audit_writer (the daemon) may append records, rejects and verification runs, advance
  chain heads and offsets, and read only what the write path reads; no UPDATE, DELETE or
  TRUNCATE on the append-only tables, so disabling their triggers would not help it;
- audit_reader (verify, export, status, people) may only SELECT.

Roles are cluster-wide but grants are per database, and the test suite clones databases
from one migrated template: roles are created idempotently (a concurrent creator in
another database wins harmlessly), and a migrating user without CREATEROLE gets a NOTICE
and grants go only to the roles that exist. Downgrade revokes the grants; the roles and
the ownership stay (other databases may use them, and 0001's tables stay owned by
someone who can still drop them).

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER = "audit_owner"
WRITER = "audit_writer"
READER = "audit_reader"

TABLES = (
    "alembic_version", "audit_records", "audit_rejected_events", "audit_verification_log",
    "audit_chain_state", "audit_consumer_offsets",
)

WRITER_TABLE_PRIVILEGES = {
    "alembic_version": "SELECT",  # `run` refuses a schema that is not at head
    "audit_records": "SELECT, INSERT",  # SELECT: the redelivery lookup by audit_id
    # SELECT (id) only: SQLAlchemy's INSERT ... RETURNING id needs it, the payloads stay
    # unreadable to the writer.
    "audit_rejected_events": "INSERT, SELECT (id)",
    "audit_verification_log": "INSERT, SELECT (id)",
    # SELECT ... FOR UPDATE needs UPDATE as well as SELECT.
    "audit_chain_state": "SELECT, INSERT, UPDATE",
    "audit_consumer_offsets": "SELECT, INSERT, UPDATE",
}
WRITER_SEQUENCES = ("audit_rejected_events_id_seq", "audit_verification_log_id_seq")


def _create_role(role: str) -> str:
    return f"""
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
            BEGIN
                CREATE ROLE {role} NOLOGIN;
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- created meanwhile by a migration of another database
                WHEN insufficient_privilege THEN
                    RAISE NOTICE 'role {role} not created: % lacks CREATEROLE (%)',
                        current_user, 'docs/operations.md, Security';
            END;
        END IF;"""


def _if_role_exists(role: str, statements: Sequence[str]) -> str:
    body = "\n".join(f"            {statement};" for statement in statements)
    return f"""
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
{body}
        END IF;"""


def _do(*blocks: str) -> None:
    op.execute("DO $$\nBEGIN" + "".join(blocks) + "\nEND\n$$")


def _take_ownership() -> str:
    """Give the schema's objects to audit_owner, when the migrating user may do that.

    A non-superuser that just created audit_owner holds only ADMIN on it (PostgreSQL 16+:
    no INHERIT, no SET), so it first grants itself a full membership when it may: whoever
    runs migrations is an owner. Downgrade leaves ownership and the schema grant as they
    are.
    """
    transfers = "\n".join(
        f"                ALTER TABLE {table} OWNER TO {OWNER};" for table in TABLES
    )
    return f"""
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER}') THEN
            IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                BEGIN
                    EXECUTE format('GRANT {OWNER} TO %I', current_user);
                EXCEPTION WHEN insufficient_privilege THEN
                    NULL;  -- reported below when the transfer itself fails
                END;
            END IF;
            BEGIN
                -- A new owner needs CREATE on the schema (PostgreSQL 15+ gives it only to
                -- the database owner); it needs it anyway for later migrations' tables.
                EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO {OWNER}', current_schema());
{transfers}
                ALTER FUNCTION audit_reject_modification() OWNER TO {OWNER};
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE '% cannot become {OWNER}: the tables stay owned by %',
                    current_user, current_user;
            END;
        END IF;"""


def _schema_usage(verb: str, role: str) -> str:
    preposition = "TO" if verb == "GRANT" else "FROM"
    return (f"EXECUTE format('{verb} USAGE ON SCHEMA %I {preposition} {role}', "
            "current_schema())")


def upgrade() -> None:
    _do(*(_create_role(role) for role in (OWNER, WRITER, READER)))
    _do(_take_ownership())
    writer = [_schema_usage("GRANT", WRITER)]
    writer += [f"GRANT {privileges} ON {table} TO {WRITER}"
               for table, privileges in WRITER_TABLE_PRIVILEGES.items()]
    writer += [f"GRANT USAGE ON SEQUENCE {sequence} TO {WRITER}"
               for sequence in WRITER_SEQUENCES]
    reader = [_schema_usage("GRANT", READER)]
    reader += [f"GRANT SELECT ON {table} TO {READER}" for table in TABLES]
    _do(_if_role_exists(WRITER, writer), _if_role_exists(READER, reader))


def downgrade() -> None:
    blocks = []
    for role in (WRITER, READER):
        statements = [f"REVOKE ALL ON {table} FROM {role}" for table in TABLES]
        statements += [f"REVOKE ALL ON SEQUENCE {sequence} FROM {role}"
                       for sequence in WRITER_SEQUENCES]
        statements.append(_schema_usage("REVOKE", role))
        blocks.append(_if_role_exists(role, statements))
    _do(*blocks)
