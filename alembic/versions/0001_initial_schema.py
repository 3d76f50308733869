"""Initial schema: the chain, its heads, consumer offsets, rejects and the verification log.

Also installs the append-only triggers: UPDATE, DELETE and TRUNCATE are rejected on
audit_records and audit_rejected_events (SQLAlchemy metadata cannot express triggers).

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

APPEND_ONLY_TABLES = ("audit_records", "audit_rejected_events")

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_chain_state",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.Text(), nullable=False),
        sa.Column("last_timestamp", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "last_hash ~ '^[0-9a-f]{64}$'",
            name=op.f("ck_audit_chain_state_last_hash_hex"),
        ),
        sa.CheckConstraint(
            "last_sequence >= -1", name=op.f("ck_audit_chain_state_last_sequence_valid")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_audit_chain_state")),
        comment="Chain head per tenant: last sequence and hash.",
    )
    op.create_table(
        "audit_consumer_offsets",
        sa.Column("consumer_group", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "next_offset >= 0",
            name=op.f("ck_audit_consumer_offsets_next_offset_non_negative"),
        ),
        sa.PrimaryKeyConstraint(
            "consumer_group",
            "topic",
            "partition",
            name=op.f("pk_audit_consumer_offsets"),
        ),
    )
    op.create_table(
        "audit_records",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("sequence_number", sa.BigInteger(), nullable=False),
        sa.Column("audit_id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("event_category", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("actor_type", sa.Text(), nullable=False),
        sa.Column("actor_id", sa.Text(), nullable=False),
        sa.Column("actor_permissions", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("investigation_id", sa.Text(), nullable=False),
        sa.Column("alert_id", sa.Text(), nullable=False),
        sa.Column("entity_ids", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("context", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("decision", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("outcome", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("source_service", sa.Text(), nullable=False),
        sa.Column("record_version", sa.Text(), nullable=False),
        sa.Column("previous_hash", sa.Text(), nullable=False),
        sa.Column("record_hash", sa.Text(), nullable=False),
        sa.Column(
            "kafka_topic", sa.Text(), nullable=True, comment="metadata, not hashed"
        ),
        sa.Column(
            "kafka_partition",
            sa.Integer(),
            nullable=True,
            comment="metadata, not hashed",
        ),
        sa.Column(
            "kafka_offset",
            sa.BigInteger(),
            nullable=True,
            comment="metadata, not hashed",
        ),
        sa.CheckConstraint(
            "actor_type IN ('agent', 'human', 'system', 'scheduler')",
            name=op.f("ck_audit_records_actor_type_known"),
        ),
        sa.CheckConstraint(
            "previous_hash ~ '^[0-9a-f]{64}$'",
            name=op.f("ck_audit_records_previous_hash_hex"),
        ),
        sa.CheckConstraint(
            "record_hash ~ '^[0-9a-f]{64}$'",
            name=op.f("ck_audit_records_record_hash_hex"),
        ),
        sa.CheckConstraint(
            "severity IN ('info', 'warning', 'critical')",
            name=op.f("ck_audit_records_severity_known"),
        ),
        sa.CheckConstraint(
            "sequence_number >= 0", name=op.f("ck_audit_records_sequence_non_negative")
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "sequence_number", name=op.f("pk_audit_records")
        ),
        sa.UniqueConstraint(
            "tenant_id", "audit_id", name=op.f("uq_audit_records_tenant_id_audit_id")
        ),
        comment="Per-tenant SHA-256 hash chain of audit events; append-only.",
    )
    op.create_index(
        "ix_audit_records_actor_id", "audit_records", ["actor_id"], unique=False
    )
    op.create_index(
        "ix_audit_records_alert_id",
        "audit_records",
        ["alert_id"],
        unique=False,
        postgresql_where=sa.text("alert_id <> ''"),
    )
    op.create_index(
        "ix_audit_records_event_type", "audit_records", ["event_type"], unique=False
    )
    op.create_index(
        "ix_audit_records_investigation_id",
        "audit_records",
        ["investigation_id"],
        unique=False,
        postgresql_where=sa.text("investigation_id <> ''"),
    )
    op.create_index(
        "ix_audit_records_severity_elevated",
        "audit_records",
        ["tenant_id", "severity", "timestamp"],
        unique=False,
        postgresql_where=sa.text("severity IN ('warning', 'critical')"),
    )
    op.create_index(
        "ix_audit_records_tenant_timestamp",
        "audit_records",
        ["tenant_id", "timestamp"],
        unique=False,
    )
    op.create_table(
        "audit_rejected_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("consumer_group", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("kafka_timestamp", sa.DateTime(timezone=True), nullable=True),
        sa.Column("raw_key", sa.LargeBinary(), nullable=True),
        sa.Column("raw_value", sa.LargeBinary(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "tenant_id",
            sa.Text(),
            nullable=True,
            comment="best effort, from the payload",
        ),
        sa.Column(
            "audit_id",
            sa.Text(),
            nullable=True,
            comment="best effort, from the payload",
        ),
        sa.Column(
            "rejected_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_rejected_events")),
    )
    op.create_index(
        "ix_audit_rejected_events_coordinates",
        "audit_rejected_events",
        ["topic", "partition", "offset"],
        unique=False,
    )
    op.create_index(
        "ix_audit_rejected_events_rejected_at",
        "audit_rejected_events",
        ["rejected_at"],
        unique=False,
    )
    op.create_table(
        "audit_verification_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("from_sequence", sa.BigInteger(), nullable=True),
        sa.Column("to_sequence", sa.BigInteger(), nullable=True),
        sa.Column("records_checked", sa.BigInteger(), nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("errors", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_verification_log")),
    )
    op.create_index(
        "ix_audit_verification_log_tenant_started",
        "audit_verification_log",
        ["tenant_id", "started_at"],
        unique=False,
    )
    op.execute(
        """
        CREATE FUNCTION audit_reject_modification() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'table % is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END;
        $$
        """
    )
    for table in APPEND_ONLY_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_reject_modification()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification()"
        )


def downgrade() -> None:
    for table in APPEND_ONLY_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update_delete ON {table}")
    op.execute("DROP FUNCTION IF EXISTS audit_reject_modification()")
    op.drop_index(
        "ix_audit_verification_log_tenant_started", table_name="audit_verification_log"
    )
    op.drop_table("audit_verification_log")
    op.drop_index(
        "ix_audit_rejected_events_rejected_at", table_name="audit_rejected_events"
    )
    op.drop_index(
        "ix_audit_rejected_events_coordinates", table_name="audit_rejected_events"
    )
    op.drop_table("audit_rejected_events")
    op.drop_index("ix_audit_records_tenant_timestamp", table_name="audit_records")
    op.drop_index(
        "ix_audit_records_severity_elevated",
        table_name="audit_records",
        postgresql_where=sa.text("severity IN ('warning', 'critical')"),
    )
    op.drop_index(
        "ix_audit_records_investigation_id",
        table_name="audit_records",
        postgresql_where=sa.text("investigation_id <> ''"),
    )
    op.drop_index("ix_audit_records_event_type", table_name="audit_records")
    op.drop_index(
        "ix_audit_records_alert_id",
        table_name="audit_records",
        postgresql_where=sa.text("alert_id <> ''"),
    )
    op.drop_index("ix_audit_records_actor_id", table_name="audit_records")
    op.drop_table("audit_records")
    op.drop_table("audit_consumer_offsets")
    op.drop_table("audit_chain_state")
