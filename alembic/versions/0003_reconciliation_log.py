"""Reconciliation: the run log and the index reconcile streams records by.

- `audit_reconciliation_log`: one row per `reconcile` run (SPEC section 9).
- `ix_audit_records_kafka_coordinates`: reconcile reads each partition's records in offset
  order; without it every run would sort the whole table once per partition. Building it
  on a large table takes a while (the daemon is stopped during upgrades anyway).

Privileges, like 0002's and for the roles that exist: reconcile compares the quarantined
raw bytes, which only audit_reader may read, so audit_reader (not the writer) may append a
run; audit_writer may read the runs but not their finding details (they can quote message
content), for the daemon's /metrics.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "audit_reconciliation_log"
SEQUENCE = "audit_reconciliation_log_id_seq"
OWNER = "audit_owner"
WRITER = "audit_writer"
READER = "audit_reader"
WRITER_COLUMNS = ("id", "topic", "consumer_group", "partitions", "started_at", "finished_at",
                  "duration_ms", "counts", "findings", "ok", "error")
"""Everything but finding_details."""


def _if_role_exists(role: str, statements: Sequence[str]) -> str:
    body = "\n".join(f"            {statement};" for statement in statements)
    return f"""
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
{body}
        END IF;"""


def _do(*blocks: str) -> None:
    op.execute("DO $$\nBEGIN" + "".join(blocks) + "\nEND\n$$")


def upgrade() -> None:
    op.create_index(
        "ix_audit_records_kafka_coordinates",
        "audit_records",
        ["kafka_topic", "kafka_partition", "kafka_offset"],
        unique=False,
    )
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("consumer_group", sa.Text(), nullable=False),
        sa.Column("partitions", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column(
            "counts",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            comment="messages per outcome: scanned, chained, rejected, redelivered, ...",
        ),
        sa.Column("findings", sa.BigInteger(), nullable=False),
        sa.Column(
            "finding_details",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            comment="the first findings, capped",
        ),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column(
            "error",
            sa.Text(),
            nullable=True,
            comment="why the run stopped before it finished; NULL when it finished",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_reconciliation_log")),
    )
    _do(f"""
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER}') THEN
            BEGIN
                ALTER TABLE {TABLE} OWNER TO {OWNER};
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE '% cannot give {TABLE} to {OWNER}', current_user;
            END;
        END IF;""")
    _do(
        _if_role_exists(WRITER, [f"GRANT SELECT ({', '.join(WRITER_COLUMNS)}) ON {TABLE} "
                                 f"TO {WRITER}"]),
        _if_role_exists(READER, [f"GRANT SELECT, INSERT ON {TABLE} TO {READER}",
                                 f"GRANT USAGE ON SEQUENCE {SEQUENCE} TO {READER}"]),
    )


def downgrade() -> None:
    op.drop_table(TABLE)  # its grants go with it
    op.drop_index("ix_audit_records_kafka_coordinates", table_name="audit_records")
