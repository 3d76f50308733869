"""SQLAlchemy 2.0 typed ORM models: the single description of the schema.

Alembic migrations create exactly this (a test runs autogenerate against a migrated
database and expects no difference). Append-only triggers live in the migration, since
SQLAlchemy metadata does not model triggers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

HEX_SHA256 = "'^[0-9a-f]{64}$'"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AuditRecord(Base):
    """One chained audit record. Append-only: triggers reject UPDATE, DELETE and TRUNCATE.

    The Kafka coordinates are operational metadata: stored for tracing, never hashed.
    """

    __tablename__ = "audit_records"

    tenant_id: Mapped[str] = mapped_column(Text)
    sequence_number: Mapped[int] = mapped_column(BigInteger)
    audit_id: Mapped[str] = mapped_column(UUID(as_uuid=False))
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event_type: Mapped[str] = mapped_column(Text)
    event_category: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(Text)
    actor_type: Mapped[str] = mapped_column(Text)
    actor_id: Mapped[str] = mapped_column(Text)
    actor_permissions: Mapped[list[str]] = mapped_column(ARRAY(Text))
    investigation_id: Mapped[str] = mapped_column(Text)
    alert_id: Mapped[str] = mapped_column(Text)
    entity_ids: Mapped[list[str]] = mapped_column(ARRAY(Text))
    context: Mapped[dict[str, Any]] = mapped_column(JSONB)
    decision: Mapped[dict[str, Any]] = mapped_column(JSONB)
    outcome: Mapped[dict[str, Any]] = mapped_column(JSONB)
    source_service: Mapped[str] = mapped_column(Text)
    record_version: Mapped[str] = mapped_column(Text)
    previous_hash: Mapped[str] = mapped_column(Text)
    record_hash: Mapped[str] = mapped_column(Text)
    kafka_topic: Mapped[str | None] = mapped_column(Text, comment="metadata, not hashed")
    kafka_partition: Mapped[int | None] = mapped_column(Integer, comment="metadata, not hashed")
    kafka_offset: Mapped[int | None] = mapped_column(BigInteger, comment="metadata, not hashed")

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "sequence_number"),
        UniqueConstraint("tenant_id", "audit_id"),
        CheckConstraint("sequence_number >= 0", name="sequence_non_negative"),
        CheckConstraint(f"previous_hash ~ {HEX_SHA256}", name="previous_hash_hex"),
        CheckConstraint(f"record_hash ~ {HEX_SHA256}", name="record_hash_hex"),
        CheckConstraint("severity IN ('info', 'warning', 'critical')", name="severity_known"),
        CheckConstraint(
            "actor_type IN ('agent', 'human', 'system', 'scheduler')", name="actor_type_known"
        ),
        Index("ix_audit_records_tenant_timestamp", "tenant_id", "timestamp"),
        Index("ix_audit_records_investigation_id", "investigation_id",
              postgresql_where=text("investigation_id <> ''")),
        Index("ix_audit_records_alert_id", "alert_id", postgresql_where=text("alert_id <> ''")),
        Index("ix_audit_records_event_type", "event_type"),
        Index("ix_audit_records_actor_id", "actor_id"),
        Index("ix_audit_records_severity_elevated", "tenant_id", "severity", "timestamp",
              postgresql_where=text("severity IN ('warning', 'critical')")),
        # reconcile streams each partition's records in offset order.
        Index("ix_audit_records_kafka_coordinates", "kafka_topic", "kafka_partition",
              "kafka_offset"),
        {"comment": "Per-tenant SHA-256 hash chain of audit events; append-only."},
    )


class AuditChainState(Base):
    """Each tenant's chain head; its row is locked FOR UPDATE while the tenant is chained.

    Beside the head lives the tenant's Merkle tree (SPEC 8) as its compact range, updated
    in the same batch transaction, so a checkpoint never rereads the chain.
    """

    __tablename__ = "audit_chain_state"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(Text)
    last_timestamp: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    merkle_range: Mapped[bytes] = mapped_column(
        LargeBinary, server_default=text("''::bytea"),
        comment="roots of the perfect subtrees of the tree of last_sequence + 1 leaves",
    )
    checkpointed_size: Mapped[int] = mapped_column(
        BigInteger, server_default=text("0"), comment="tree size of the newest checkpoint"
    )
    checkpointed_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="when the newest checkpoint was signed"
    )

    __table_args__ = (
        CheckConstraint(f"last_hash ~ {HEX_SHA256}", name="last_hash_hex"),
        CheckConstraint("last_sequence >= -1", name="last_sequence_valid"),
        # Half-empty pages keep every batch's head updates HOT (migration 0006).
        {"comment": "Chain head per tenant: last sequence and hash.",
         "postgresql_with": {"fillfactor": 50}},
    )


class AuditConsumerOffset(Base):
    """Next offset to consume per partition, committed with the records it covers.

    The database, not Kafka, is the source of truth for what was consumed: the Kafka
    commit happens after the database commit and may be lost without harm.
    """

    __tablename__ = "audit_consumer_offsets"

    consumer_group: Mapped[str] = mapped_column(Text)
    topic: Mapped[str] = mapped_column(Text)
    partition: Mapped[int] = mapped_column(Integer)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("consumer_group", "topic", "partition"),
        CheckConstraint("next_offset >= 0", name="next_offset_non_negative"),
    )


class AuditRejectedEvent(Base):
    """A message that could not be chained, kept byte for byte with the reason. Append-only."""

    __tablename__ = "audit_rejected_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    consumer_group: Mapped[str] = mapped_column(Text)
    topic: Mapped[str] = mapped_column(Text)
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    kafka_timestamp: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    raw_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    raw_value: Mapped[bytes | None] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)
    tenant_id: Mapped[str | None] = mapped_column(Text, comment="best effort, from the payload")
    audit_id: Mapped[str | None] = mapped_column(Text, comment="best effort, from the payload")
    rejected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (
        Index("ix_audit_rejected_events_coordinates", "topic", "partition", "offset"),
        Index("ix_audit_rejected_events_rejected_at", "rejected_at"),
    )


class AuditVerificationLog(Base):
    """One row per verification run of one tenant."""

    __tablename__ = "audit_verification_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    from_sequence: Mapped[int | None] = mapped_column(BigInteger)
    to_sequence: Mapped[int | None] = mapped_column(BigInteger)
    records_checked: Mapped[int] = mapped_column(BigInteger)
    valid: Mapped[bool] = mapped_column(Boolean)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_audit_verification_log_tenant_started", "tenant_id", "started_at"),)


class AuditCheckpoint(Base):
    """A signed checkpoint of one tenant's tree (C2SP tlog-checkpoint in a signed note).

    Append-only. This copy is for listing and republishing; the copy that protects the
    chain is the one in the sink outside the database, which its owner cannot rewrite.
    """

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary)
    key_name: Mapped[str] = mapped_column(Text)
    note: Mapped[str] = mapped_column(Text, comment="the whole signed note")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    __table_args__ = (
        UniqueConstraint("tenant_id", "tree_size"),
        CheckConstraint("tree_size > 0", name="tree_size_positive"),
        CheckConstraint("length(root_hash) = 32", name="root_hash_sha256"),
        {"comment": "Signed checkpoints per tenant; append-only."},
    )


class AuditTreeNode(Base):
    """A kept inner node of a tenant's Merkle tree (C2SP tlog-tiles, tile height 8).

    Only perfect subtrees at levels 8, 16, 24, ... are rows; the leaves are the records'
    record_hash and the levels between are folded from these (see `core.tiles`): one row
    per 256 records. Append-only, written in the batch transaction that completes them.
    """

    __tablename__ = "audit_tree_nodes"

    tenant_id: Mapped[str] = mapped_column(Text)
    level: Mapped[int] = mapped_column(SmallInteger, comment="8, 16, 24, ...")
    node_index: Mapped[int] = mapped_column(
        BigInteger, comment="the subtree over leaves [index * 2**level, (index + 1) * 2**level)")
    hash: Mapped[bytes] = mapped_column(LargeBinary, comment="RFC 9162 hash of that subtree")

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "level", "node_index"),
        CheckConstraint("length(hash) = 32", name="hash_sha256"),
        CheckConstraint("level > 0 AND level % 8 = 0", name="level_kept"),
        CheckConstraint("node_index >= 0", name="node_index_valid"),
        {"comment": "Inner nodes of each tenant's Merkle tree, levels 8, 16, ...; "
                    "append-only."},
    )


class AuditReconciliationLog(Base):
    """One row per `reconcile` run: the topic checked against the store (SPEC section 9)."""

    __tablename__ = "audit_reconciliation_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(Text)
    consumer_group: Mapped[str] = mapped_column(Text)
    partitions: Mapped[list[int]] = mapped_column(ARRAY(Integer))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(BigInteger)
    counts: Mapped[dict[str, int]] = mapped_column(
        JSONB, comment="messages per outcome: scanned, chained, rejected, redelivered, ...")
    findings: Mapped[int] = mapped_column(BigInteger)
    finding_details: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, comment="the first findings, capped")
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(
        Text, comment="why the run stopped before it finished; NULL when it finished")
