"""Signed checkpoints: each tenant's Merkle tree beside its head, and audit_checkpoints.

Existing chains get their compact range built here, from their records in sequence order
(one streamed pass per tenant), so the daemon never has to reread a chain. A tenant whose
records do not match its head (a broken chain) stops the migration with the facts: run
`audit-service verify` first.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from audit_service.core.merkle import CompactRange, leaf_hash

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER = "audit_owner"
WRITER = "audit_writer"
READER = "audit_reader"
BACKFILL_CHUNK_ROWS = 10_000


def upgrade() -> None:
    op.add_column("audit_chain_state", sa.Column(
        "merkle_range", sa.LargeBinary(), server_default=sa.text("''::bytea"), nullable=False,
        comment="roots of the perfect subtrees of the tree of last_sequence + 1 leaves"))
    op.add_column("audit_chain_state", sa.Column(
        "checkpointed_size", sa.BigInteger(), server_default=sa.text("0"), nullable=False,
        comment="tree size of the newest checkpoint"))
    op.add_column("audit_chain_state", sa.Column(
        "checkpointed_at", sa.DateTime(timezone=True), nullable=True,
        comment="when the newest checkpoint was signed"))
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(), nullable=False),
        sa.Column("key_name", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False, comment="the whole signed note"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.CheckConstraint("tree_size > 0", name="ck_audit_checkpoints_tree_size_positive"),
        sa.CheckConstraint("length(root_hash) = 32",
                           name="ck_audit_checkpoints_root_hash_sha256"),
        sa.PrimaryKeyConstraint("id", name="pk_audit_checkpoints"),
        sa.UniqueConstraint("tenant_id", "tree_size",
                            name="uq_audit_checkpoints_tenant_id_tree_size"),
        comment="Signed checkpoints per tenant; append-only.",
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON "
        "audit_checkpoints FOR EACH ROW EXECUTE FUNCTION audit_reject_modification()"
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification()"
    )
    _grant()
    _build_existing_trees()


def _grant() -> None:
    """Like 0002: audit_owner owns it, the writer appends and reads, the reader reads."""
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER}') THEN
                BEGIN
                    ALTER TABLE audit_checkpoints OWNER TO {OWNER};
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE NOTICE 'audit_checkpoints stays owned by %', current_user;
                END;
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER}') THEN
                GRANT SELECT, INSERT ON audit_checkpoints TO {WRITER};
                GRANT USAGE ON SEQUENCE audit_checkpoints_id_seq TO {WRITER};
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
                GRANT SELECT ON audit_checkpoints TO {READER};
            END IF;
        END
        $$""")


def _build_existing_trees() -> None:
    connection = op.get_bind()
    heads = connection.execute(sa.text(
        "SELECT tenant_id, last_sequence FROM audit_chain_state WHERE last_sequence >= 0 "
        "ORDER BY tenant_id")).all()
    for tenant_id, last_sequence in heads:
        tree = CompactRange()
        rows = connection.execute(
            sa.text("SELECT sequence_number, record_hash FROM audit_records "
                    "WHERE tenant_id = :tenant ORDER BY sequence_number"),
            {"tenant": tenant_id}, execution_options={"yield_per": BACKFILL_CHUNK_ROWS})
        for sequence_number, record_hash in rows:
            if sequence_number != tree.size:
                raise RuntimeError(
                    f"tenant {tenant_id!r}: record {tree.size} is missing (found sequence "
                    f"{sequence_number}); run `audit-service verify` before migrating")
            tree.append(leaf_hash(bytes.fromhex(record_hash)))
        if tree.size != last_sequence + 1:
            raise RuntimeError(
                f"tenant {tenant_id!r}: its head says {last_sequence + 1} records, the table "
                f"holds {tree.size}; run `audit-service verify` before migrating")
        connection.execute(
            sa.text("UPDATE audit_chain_state SET merkle_range = :tree WHERE tenant_id = :tenant"),
            {"tree": tree.to_bytes(), "tenant": tenant_id})


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_truncate ON audit_checkpoints")
    op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_update_delete ON audit_checkpoints")
    op.drop_table("audit_checkpoints")
    op.drop_column("audit_chain_state", "checkpointed_at")
    op.drop_column("audit_chain_state", "checkpointed_size")
    op.drop_column("audit_chain_state", "merkle_range")
