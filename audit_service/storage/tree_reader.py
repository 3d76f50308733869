"""Read-only queries a proof needs: checkpoints, one record, and tiles of the tree.

All of a proof's reads run in ONE read-only REPEATABLE READ transaction, so a daemon
committing meanwhile cannot show it a checkpoint newer than the rows it reads. All the
tiles a proof needs come in ONE statement, whatever the tree's size: a primary-key range
scan per tile, of the records' `record_hash` (audit_records) for leaves and of
audit_tree_nodes for the kept levels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text

from audit_service.core.merkle import leaf_hash
from audit_service.core.record_text import RecordRow
from audit_service.core.tiles import Tile
from audit_service.storage.engine import translated_errors
from audit_service.storage.reader import CheckpointRow, record_rows_query

_CHECKPOINT = (
    "SELECT tenant_id, tree_size, root_hash, key_name, created_at, note "
    "FROM audit_checkpoints WHERE tenant_id = :tenant"
)
# One row per node, tagged with its tile: each tile of the arrays is one index range scan
# of the table its level lives in (the other branch is cut by its `t.level` condition).
_TILES = text(
    "SELECT t.level, t.start, t.stop, n.hash FROM unnest(CAST(:levels AS integer[]), "
    "CAST(:starts AS bigint[]), CAST(:ends AS bigint[])) AS t(level, start, stop) "
    "CROSS JOIN LATERAL ("
    "SELECT sequence_number AS position, decode(record_hash, 'hex') AS hash "
    "FROM audit_records WHERE t.level = 0 AND tenant_id = :tenant "
    "AND sequence_number >= t.start AND sequence_number < t.stop "
    "UNION ALL "
    "SELECT node_index, hash FROM audit_tree_nodes WHERE t.level > 0 "
    "AND tenant_id = :tenant AND level = t.level "
    "AND node_index >= t.start AND node_index < t.stop"
    ") AS n ORDER BY t.level, t.start, n.position"
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

    def record(self, sequence_number: int) -> RecordRow | None:
        """The record's row as `export` renders it (`record_text.ROW_FIELDS`)."""
        statement = record_rows_query(self.tenant_id, sequence_number, sequence_number)
        with translated_errors("reading a record"):
            row = self._connection.execute(statement).one_or_none()
        return None if row is None else tuple(row)

    def tiles(self, tiles: Sequence[Tile]) -> dict[Tile, list[bytes]]:
        """Each tile's hashes in order (as many as exist), leaves as leaf hashes; no
        statement when there are none (a consistency proof between equal sizes)."""
        found: dict[Tile, list[bytes]] = {tile: [] for tile in tiles}
        if not tiles:
            return found
        with translated_errors("reading tiles of the tree"):
            rows = self._connection.execute(_TILES, {
                "tenant": self.tenant_id, "levels": [tile.level for tile in tiles],
                "starts": [tile.start for tile in tiles], "ends": [tile.end for tile in tiles]})
            for level, start, end, value in rows:
                found[Tile(level, start, end)].append(
                    leaf_hash(bytes(value)) if level == 0 else bytes(value))
        return found


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
