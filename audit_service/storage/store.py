"""The write path's database operations: every query the daemon runs is a named method.

All methods run inside the caller's transaction (one per batch, see `ingest.batch.commit_prepared`);
none of them commits. Lock order is fixed to avoid deadlocks between instances:
partition offset rows first (sorted by partition), then tenant heads (sorted by tenant).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, insert, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from audit_service.core.chain import GENESIS_PREVIOUS_HASH, ChainHead
from audit_service.core.checkpoint import SignedCheckpoint
from audit_service.core.merkle import CompactRange, Node
from audit_service.core.record_mapping import COPY_COLUMNS, record_from_row
from audit_service.core.tree_state import TreeState
from audit_service.storage.engine import RecordRefused, translated_errors, violated_constraint
from audit_service.storage.models import (
    AuditChainState,
    AuditCheckpoint,
    AuditConsumerOffset,
    AuditRecord,
    AuditRejectedEvent,
)

# The statements whose work grows with the tenants in a batch are set-based: ONE statement
# each over arrays (unnest), however many tenants a batch touches; a statement per tenant
# (executemany) made a 2,000-tenant batch cost ~2,000 round trips. NOT EXISTS before
# ON CONFLICT: an index probe per known tenant costs a quarter of a conflicting insert.
_INSERT_EMPTY_HEADS = text(
    "INSERT INTO audit_chain_state (tenant_id, last_sequence, last_hash) "
    "SELECT tenant_id, -1, :empty_hash FROM unnest(CAST(:tenants AS text[])) AS t(tenant_id) "
    "WHERE NOT EXISTS (SELECT FROM audit_chain_state AS s WHERE s.tenant_id = t.tenant_id) "
    "ORDER BY tenant_id ON CONFLICT (tenant_id) DO NOTHING"
)
_LOCK_HEADS = text(
    "SELECT tenant_id, last_sequence, last_hash, merkle_range, checkpointed_size, "
    "checkpointed_at FROM audit_chain_state WHERE tenant_id = ANY(CAST(:tenants AS text[])) "
    "ORDER BY tenant_id FOR UPDATE"
)
_SAVE_HEADS = text(
    "UPDATE audit_chain_state AS s SET last_sequence = v.last_sequence, "
    "last_hash = v.last_hash, last_timestamp = v.last_timestamp, "
    "updated_at = CAST(:updated_at AS timestamptz), merkle_range = v.merkle_range, "
    "checkpointed_size = v.checkpointed_size, checkpointed_at = v.checkpointed_at "
    "FROM unnest(CAST(:tenants AS text[]), CAST(:sequences AS bigint[]), "
    "CAST(:hashes AS text[]), CAST(:timestamps AS timestamptz[]), CAST(:ranges AS bytea[]), "
    "CAST(:checkpointed_sizes AS bigint[]), CAST(:checkpointed_ats AS timestamptz[])) "
    "AS v(tenant_id, last_sequence, last_hash, last_timestamp, merkle_range, "
    "checkpointed_size, checkpointed_at) WHERE s.tenant_id = v.tenant_id"
)

_SAVE_CHECKPOINTED = text(
    "UPDATE audit_chain_state AS s SET checkpointed_size = v.checkpointed_size, "
    "checkpointed_at = v.checkpointed_at FROM unnest(CAST(:tenants AS text[]), "
    "CAST(:checkpointed_sizes AS bigint[]), CAST(:checkpointed_ats AS timestamptz[])) "
    "AS v(tenant_id, checkpointed_size, checkpointed_at) WHERE s.tenant_id = v.tenant_id"
)


_AUDIT_ID_UNIQUE = "uq_audit_records_tenant_id_audit_id"


class AuditIdTaken(RecordRefused):
    """A copied record's (tenant_id, audit_id) is already stored: the batch was chained
    without looking its audit_ids up first and must be redone with the lookup."""


@dataclass(frozen=True, slots=True)
class NewCheckpoint:
    """A checkpoint signed inside the batch transaction whose records it covers."""

    signed: SignedCheckpoint
    key_name: str


def _tree_state(last_sequence: int, merkle_range: bytes, checkpointed_size: int,
                checkpointed_at: datetime | None) -> TreeState:
    tree = CompactRange.from_bytes(last_sequence + 1, bytes(merkle_range))
    return TreeState(tree, checkpointed_size, checkpointed_at)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message quarantined with its raw bytes, coordinates and reason."""

    topic: str
    partition: int
    offset: int
    kafka_timestamp: datetime | None
    raw_key: bytes | None
    raw_value: bytes | None
    reason: str
    tenant_id: str | None
    audit_id: str | None


class ChainStore:
    """Named operations on one SQLAlchemy session (one batch transaction)."""

    def __init__(self, session: Session, consumer_group: str, topic: str):
        self.session = session
        self.consumer_group = consumer_group
        self.topic = topic

    def lock_offsets(self, partitions: Sequence[int]) -> dict[int, int]:
        """Lock the partitions' offset rows (creating them) and return their next offsets.

        Holding these locks serialises two instances that briefly own the same partition:
        the second sees the first's committed offset and skips what was already processed.
        """
        ordered = sorted(set(partitions))
        with translated_errors("locking consumer offsets"):
            self.session.execute(
                pg_insert(AuditConsumerOffset)
                .values([
                    {"consumer_group": self.consumer_group, "topic": self.topic,
                     "partition": partition, "next_offset": 0}
                    for partition in ordered
                ])
                .on_conflict_do_nothing()
            )
            rows = self.session.execute(
                select(AuditConsumerOffset.partition, AuditConsumerOffset.next_offset)
                .where(
                    AuditConsumerOffset.consumer_group == self.consumer_group,
                    AuditConsumerOffset.topic == self.topic,
                    AuditConsumerOffset.partition.in_(ordered),
                )
                .order_by(AuditConsumerOffset.partition)
                .with_for_update()
            ).all()
        return {partition: next_offset for partition, next_offset in rows}

    def lock_heads(
        self, tenant_ids: Iterable[str]
    ) -> tuple[dict[str, ChainHead], dict[str, TreeState]]:
        """Lock each tenant's head row in sorted order, creating empty heads for new tenants;
        return the heads and the Merkle trees kept beside them.

        An empty head (last_sequence -1) never survives a commit: the batch that creates it
        also appends the tenant's genesis record and advances the head. A concurrent
        instance inserting the same new tenant waits on the unique key, then sees our row.
        """
        ordered = sorted(set(tenant_ids))
        if not ordered:
            return {}, {}
        with translated_errors("locking chain heads"):
            self.session.execute(_INSERT_EMPTY_HEADS, {
                "tenants": ordered, "empty_hash": GENESIS_PREVIOUS_HASH})
            rows = self.session.execute(_LOCK_HEADS, {"tenants": ordered}).all()
        heads = {tenant: ChainHead(tenant, sequence, last) for tenant, sequence, last, *_ in rows}
        trees = {row[0]: _tree_state(row[1], *row[3:]) for row in rows}
        return heads, trees

    def lock_trees_due(self, signed_before: datetime | None) -> dict[str, TreeState]:
        """Lock the trees that grew since their newest checkpoint and whose checkpoint clock
        started before `signed_before` (None: every tree that grew), in tenant order.

        SKIP LOCKED: a tenant whose batch holds its row right now is passed over (its batch
        or the next pass checkpoints it), so this never waits on the write path.
        """
        state = AuditChainState
        statement = (
            select(state.tenant_id, state.last_sequence, state.merkle_range,
                   state.checkpointed_size, state.checkpointed_at)
            .where(state.last_sequence + 1 > state.checkpointed_size)
            .order_by(state.tenant_id)
            .with_for_update(skip_locked=True)
        )
        if signed_before is not None:
            statement = statement.where(or_(
                state.checkpointed_at.is_(None), state.checkpointed_at <= signed_before))
        with translated_errors("locking trees due a checkpoint"):
            rows = self.session.execute(statement).all()
        return {row[0]: _tree_state(*row[1:]) for row in rows}

    def find_chained(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Records already chained for these (tenant_id, audit_id) pairs, as hashed dicts.

        One index probe per pair via unnest (a large IN list of row values plans badly);
        full rows are loaded only for the pairs that exist, which is rare (redeliveries).
        """
        wanted = list(set(keys))
        if not wanted:
            return {}
        tenants, audit_ids = zip(*wanted, strict=True)
        with translated_errors("looking up already chained audit_ids"):
            found = self.session.execute(
                text(
                    "SELECT r.tenant_id, r.sequence_number "
                    "FROM unnest(CAST(:tenants AS text[]), CAST(:audit_ids AS uuid[])) "
                    "AS k(tenant_id, audit_id) "
                    "JOIN audit_records AS r USING (tenant_id, audit_id)"
                ),
                {"tenants": list(tenants), "audit_ids": list(audit_ids)},
            ).all()
            if not found:
                return {}
            rows = self.session.scalars(
                select(AuditRecord).where(
                    tuple_(AuditRecord.tenant_id, AuditRecord.sequence_number).in_(found)
                )
            ).all()
        return {(row.tenant_id, row.audit_id): record_from_row(row) for row in rows}

    def copy_records(self, lines: Sequence[str]) -> None:
        """Append records with COPY (see `record_mapping.copy_line`) on the session's own
        connection, so they commit or roll back with the heads and offsets."""
        if not lines:
            return
        try:
            with translated_errors("copying audit records"):
                dbapi_connection = self.session.connection().connection.dbapi_connection
                assert dbapi_connection is not None  # checked out by the batch transaction
                cursor = dbapi_connection.cursor()
                try:
                    cursor.copy_expert(
                        f"COPY audit_records ({', '.join(COPY_COLUMNS)}) FROM STDIN",
                        io.StringIO("".join(lines)),
                    )
                finally:
                    cursor.close()
        except RecordRefused as exc:
            if violated_constraint(exc.__cause__) == _AUDIT_ID_UNIQUE:
                raise AuditIdTaken(str(exc)) from exc.__cause__
            raise

    def insert_record_isolated(self, row: dict[str, Any]) -> str | None:
        """Insert one record in a savepoint; return PostgreSQL's refusal, or None on success.

        Used only after a batch insert failed on row content, so one bad row is
        quarantined instead of blocking its whole batch forever.
        """
        savepoint = self.session.begin_nested()
        try:
            with translated_errors("inserting audit record"):
                self.session.execute(insert(AuditRecord), [row])
        except RecordRefused as exc:
            savepoint.rollback()
            return str(exc)
        savepoint.commit()
        return None

    def save_heads(
        self, heads: Sequence[tuple[ChainHead, str, TreeState]], updated_at: str
    ) -> None:
        """Advance heads to (last sequence, last hash), with the last record's timestamp,
        and store their trees."""
        if heads:
            with translated_errors("updating chain heads"):
                self.session.execute(_SAVE_HEADS, {
                    "tenants": [head.tenant_id for head, _, _ in heads],
                    "sequences": [head.last_sequence for head, _, _ in heads],
                    "hashes": [head.last_hash for head, _, _ in heads],
                    "timestamps": [timestamp for _, timestamp, _ in heads],
                    "ranges": [tree.tree.to_bytes() for _, _, tree in heads],
                    "checkpointed_sizes": [tree.checkpointed_size for _, _, tree in heads],
                    "checkpointed_ats": [tree.checkpointed_at for _, _, tree in heads],
                    "updated_at": updated_at,
                })

    def save_checkpointed(self, trees: Mapping[str, TreeState]) -> None:
        """Record which size each tenant's newest checkpoint covers (rows already locked)."""
        if trees:
            ordered = sorted(trees.items())
            with translated_errors("updating checkpointed trees"):
                self.session.execute(_SAVE_CHECKPOINTED, {
                    "tenants": [tenant for tenant, _ in ordered],
                    "checkpointed_sizes": [tree.checkpointed_size for _, tree in ordered],
                    "checkpointed_ats": [tree.checkpointed_at for _, tree in ordered],
                })

    def insert_checkpoints(self, checkpoints: Sequence[NewCheckpoint]) -> None:
        if checkpoints:
            with translated_errors("storing checkpoints"):
                self.session.execute(
                    insert(AuditCheckpoint),
                    [{"tenant_id": c.signed.tenant_id, "tree_size": c.signed.tree_size,
                      "root_hash": c.signed.root_hash, "key_name": c.key_name,
                      "note": c.signed.note}
                     for c in checkpoints],
                )

    def insert_tree_nodes(self, nodes: Sequence[tuple[str, Node]]) -> None:
        """Append the kept tree nodes (tenant, node) the batch completed: ONE statement
        whatever their number (a batch of 2,000 records completes about eight)."""
        if not nodes:
            return
        with translated_errors("storing tree nodes"):
            self.session.execute(
                text(
                    "INSERT INTO audit_tree_nodes (tenant_id, level, node_index, hash) "
                    "SELECT * FROM unnest(CAST(:tenants AS text[]), "
                    "CAST(:levels AS smallint[]), CAST(:indexes AS bigint[]), "
                    "CAST(:hashes AS bytea[]))"
                ),
                {"tenants": [tenant for tenant, _ in nodes],
                 "levels": [node.level for _, node in nodes],
                 "indexes": [node.index for _, node in nodes],
                 "hashes": [node.hash for _, node in nodes]},
            )

    def insert_rejections(self, rejections: Sequence[Rejection]) -> None:
        if rejections:
            with translated_errors("quarantining rejected events"):
                self.session.execute(
                    insert(AuditRejectedEvent),
                    [
                        {"consumer_group": self.consumer_group, "topic": r.topic,
                         "partition": r.partition, "offset": r.offset,
                         "kafka_timestamp": r.kafka_timestamp, "raw_key": r.raw_key,
                         "raw_value": r.raw_value, "reason": r.reason,
                         "tenant_id": r.tenant_id, "audit_id": r.audit_id}
                        for r in rejections
                    ],
                )

    def save_offsets(self, next_offsets: dict[int, int]) -> None:
        """Record the next offset to consume per partition (rows already locked)."""
        if next_offsets:
            with translated_errors("saving consumer offsets"):
                self.session.execute(
                    update(AuditConsumerOffset),
                    [
                        {"consumer_group": self.consumer_group, "topic": self.topic,
                         "partition": partition, "next_offset": offset}
                        for partition, offset in sorted(next_offsets.items())
                    ],
                )

    def move_offset(self, partition: int, expected: int, new: int) -> bool:
        """Set one partition's next offset if it is still `expected` (compare-and-set).

        Only the out-of-range policy moves an offset this way (see core.offset_policy); False
        when another instance changed the row first, so the caller decides again.
        """
        with translated_errors("moving a stored offset"):
            result = self.session.execute(
                update(AuditConsumerOffset)
                .where(
                    AuditConsumerOffset.consumer_group == self.consumer_group,
                    AuditConsumerOffset.topic == self.topic,
                    AuditConsumerOffset.partition == partition,
                    AuditConsumerOffset.next_offset == expected,
                )
                .values(next_offset=new)
            )
        return cast(CursorResult[Any], result).rowcount == 1
