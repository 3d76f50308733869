"""Read-only queries a proof needs: checkpoints, one record, and tiles of the tree.

All of a proof's reads run in ONE read-only REPEATABLE READ transaction, so a daemon
committing meanwhile cannot show it a checkpoint newer than the rows it reads. A tile is
one primary-key range scan: leaves are the records' `record_hash` (audit_records), the
kept levels are rows of audit_tree_nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, select, text

from audit_service.core.merkle import leaf_hash
from audit_service.storage.engine import translated_errors
from audit_service.storage.models import AuditRecord
from audit_service.storage.reader import RECORD_COLUMNS, CheckpointRow, hashed_record

_CHECKPOINT = (
    "SELECT tenant_id, tree_size, root_hash, key_name, created_at, note "
    "FROM audit_checkpoints WHERE tenant_id = :tenant"
)
_LEAVES = text(
    "SELECT record_hash FROM audit_records WHERE tenant_id = :tenant "
    "AND sequence_number >= :start AND sequence_number < :end ORDER BY sequence_number"
)
_NODES = text(
    "SELECT hash FROM audit_tree_nodes WHERE tenant_id = :tenant AND level = :level "
    "AND node_index >= :start AND node_index < :end ORDER BY node_index"
)


class TreeReader:
    """One tenant's checkpoints, records and tiles, inside the caller's snapshot."""

    def __init__(self, connection: Connection, tenant_id: str):
        self._connection = connection
        self.tenant_id = tenant_id

    def checkpoint(self, tree_size: int | None = None) -> CheckpointRow | None:
        """The checkpoint at `tree_size` (None: the newest), or None when there is none."""
        query = _CHECKPOINT + (" AND tree_size = :size" if tree_size is not None
                               else " ORDER BY tree_size DESC LIMIT 1")
        with translated_errors("reading a checkpoint"):
            row = self._connection.execute(
                text(query), {"tenant": self.tenant_id, "size": tree_size}).one_or_none()
        if row is None:
            return None
        tenant, size, root, key_name, created_at, note = row
        return CheckpointRow(tenant, size, bytes(root), key_name, created_at, note)

    def record(self, sequence_number: int) -> dict[str, Any] | None:
        """The record exactly as hashed, plus record_hash (what `export` writes)."""
        table = AuditRecord.__table__
        statement = select(*RECORD_COLUMNS).where(
            table.c.tenant_id == self.tenant_id, table.c.sequence_number == sequence_number)
        with translated_errors("reading a record"):
            row = self._connection.execute(statement).one_or_none()
        return None if row is None else hashed_record(row)

    def leaves(self, start: int, end: int) -> list[bytes]:
        """The leaf hashes of records [start, end) (as many as exist)."""
        with translated_errors("reading leaves of the tree"):
            rows = self._connection.execute(
                _LEAVES, {"tenant": self.tenant_id, "start": start, "end": end}).scalars()
            return [leaf_hash(bytes.fromhex(record_hash)) for record_hash in rows]

    def stored(self, level: int, start: int, end: int) -> list[bytes]:
        """The kept hashes of nodes [start, end) of `level` (as many as exist)."""
        with translated_errors("reading nodes of the tree"):
            rows = self._connection.execute(
                _NODES, {"tenant": self.tenant_id, "level": level, "start": start,
                         "end": end}).scalars()
            return [bytes(value) for value in rows]


@contextmanager
def tree_reader(engine: Engine, tenant_id: str) -> Iterator[TreeReader]:
    """A TreeReader on one read-only REPEATABLE READ snapshot, closed afterwards."""
    with (
        translated_errors(f"reading the tree of tenant {tenant_id!r}"),
        engine.connect().execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True) as connection,
        connection.begin(),
    ):
        yield TreeReader(connection, tenant_id)
