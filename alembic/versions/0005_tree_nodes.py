"""Proofs: the kept inner nodes of each tenant's Merkle tree, audit_tree_nodes.

Tile storage (C2SP tlog-tiles, tile height 8, see `core.tiles`): one row per perfect
subtree at levels 8, 16, 24, ...; the leaves are the records themselves. Existing chains
get their nodes here, from their records in sequence order (one streamed pass per tenant);
a tree that does not come out as the compact range kept beside its head (a broken chain)
stops the migration with the facts: run `audit-service verify` first.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from audit_service.core.merkle import CompactRange, Node, leaf_hash
from audit_service.core.tiles import nodes_to_store

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER = "audit_owner"
WRITER = "audit_writer"
READER = "audit_reader"
BACKFILL_CHUNK_ROWS = 10_000
INSERT_CHUNK_NODES = 10_000


def upgrade() -> None:
    op.create_table(
        "audit_tree_nodes",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False, comment="8, 16, 24, ..."),
        sa.Column("node_index", sa.BigInteger(), nullable=False,
                  comment="the subtree over leaves [index * 2**level, (index + 1) * 2**level)"),
        sa.Column("hash", sa.LargeBinary(), nullable=False,
                  comment="RFC 9162 hash of that subtree"),
        sa.CheckConstraint("length(hash) = 32", name="ck_audit_tree_nodes_hash_sha256"),
        sa.CheckConstraint("level > 0 AND level % 8 = 0", name="ck_audit_tree_nodes_level_kept"),
        sa.CheckConstraint("node_index >= 0", name="ck_audit_tree_nodes_node_index_valid"),
        sa.PrimaryKeyConstraint("tenant_id", "level", "node_index", name="pk_audit_tree_nodes"),
        comment="Inner nodes of each tenant's Merkle tree, levels 8, 16, ...; append-only.",
    )
    op.execute(
        "CREATE TRIGGER audit_tree_nodes_no_update_delete BEFORE UPDATE OR DELETE ON "
        "audit_tree_nodes FOR EACH ROW EXECUTE FUNCTION audit_reject_modification()"
    )
    op.execute(
        "CREATE TRIGGER audit_tree_nodes_no_truncate BEFORE TRUNCATE ON audit_tree_nodes "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification()"
    )
    _grant()
    _store_existing_nodes()


def _grant() -> None:
    """Like 0004: audit_owner owns it, the writer appends and reads, the reader reads."""
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER}') THEN
                BEGIN
                    ALTER TABLE audit_tree_nodes OWNER TO {OWNER};
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE NOTICE 'audit_tree_nodes stays owned by %', current_user;
                END;
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER}') THEN
                GRANT SELECT, INSERT ON audit_tree_nodes TO {WRITER};
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
                GRANT SELECT ON audit_tree_nodes TO {READER};
            END IF;
        END
        $$""")


def _store_existing_nodes() -> None:
    connection = op.get_bind()
    heads = connection.execute(sa.text(
        "SELECT tenant_id, last_sequence, merkle_range FROM audit_chain_state "
        "WHERE last_sequence >= 0 ORDER BY tenant_id")).all()
    for tenant_id, last_sequence, merkle_range in heads:
        tree, pending = CompactRange(), []
        rows = connection.execute(
            sa.text("SELECT sequence_number, record_hash FROM audit_records "
                    "WHERE tenant_id = :tenant ORDER BY sequence_number"),
            {"tenant": tenant_id}, execution_options={"yield_per": BACKFILL_CHUNK_ROWS})
        for sequence_number, record_hash in rows:
            if sequence_number != tree.size:
                raise RuntimeError(
                    f"tenant {tenant_id!r}: record {tree.size} is missing (found sequence "
                    f"{sequence_number}); run `audit-service verify` before migrating")
            pending.extend(nodes_to_store(tree.append(leaf_hash(bytes.fromhex(record_hash)))))
            if len(pending) >= INSERT_CHUNK_NODES:
                _insert(connection, tenant_id, pending)
                pending = []
        if tree.size != last_sequence + 1 or tree.to_bytes() != bytes(merkle_range):
            raise RuntimeError(
                f"tenant {tenant_id!r}: its records do not make the tree kept beside its head "
                f"({tree.size} records, head at {last_sequence + 1}); run `audit-service "
                "verify` before migrating")
        _insert(connection, tenant_id, pending)


def _insert(connection: sa.Connection, tenant_id: str, nodes: list[Node]) -> None:
    if nodes:
        connection.execute(
            sa.text("INSERT INTO audit_tree_nodes (tenant_id, level, node_index, hash) "
                    "VALUES (:tenant, :level, :index, :hash)"),
            [{"tenant": tenant_id, "level": n.level, "index": n.index, "hash": n.hash}
             for n in nodes])


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_tree_nodes_no_truncate ON audit_tree_nodes")
    op.execute("DROP TRIGGER IF EXISTS audit_tree_nodes_no_update_delete ON audit_tree_nodes")
    op.drop_table("audit_tree_nodes")
