"""Read-only queries: what the verifier, the offset lookup and operator commands need.

It never imports the write path (store, batch): verifying a chain must not depend on the
code that wrote it. Records are read on a server-side cursor, never as ORM objects: the
verifier and `export` stream millions of them in constant memory, as the driver's plain
tuples in `core.record_text`'s column order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, Select, Text, cast, func, or_, select, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from audit_service.core.chain import EVENT_FIELDS, ChainHead
from audit_service.core.checkpoint import SignedCheckpoint
from audit_service.core.record_text import ROW_FIELDS, RecordRow
from audit_service.core.stored import StoredRecord, StoredReject
from audit_service.storage.engine import stream_rows, translated_errors
from audit_service.storage.models import (
    AuditChainState,
    AuditCheckpoint,
    AuditConsumerOffset,
    AuditReconciliationLog,
    AuditRecord,
    AuditRejectedEvent,
    AuditVerificationLog,
)

STREAM_CHUNK_ROWS = 2000
"""Rows fetched per round trip by the server-side cursor while streaming a chain."""

HASHED_TIMESTAMP_FORMAT: Final = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
"""to_char() pattern of `chain.format_timestamp` (applied to the UTC time), so the rendering
is done by the server instead of per row in Python; any divergence would surface as a hash
mismatch, never as a false pass."""

_JSONB_FIELDS: Final = frozenset({"context", "decision", "outcome"})


def _hashed_column(field: str) -> ColumnElement[Any]:
    """The column as text where that is cheaper to turn into the hashed value than the
    driver's type (JSONB via json.loads, timestamps rendered server-side, uuid as text)."""
    column = AuditRecord.__table__.c[field]
    if field in ("timestamp", "ingested_at"):
        utc = func.timezone("UTC", column)
        return func.to_char(utc, HASHED_TIMESTAMP_FORMAT).label(field)
    if field == "audit_id" or field in _JSONB_FIELDS:
        return cast(column, Text).label(field)
    return column


_RECORD_COLUMNS: Final = tuple(_hashed_column(field) for field in ROW_FIELDS)
"""A record row as `core.record_text` renders it."""


def record_rows_query(
    tenant_id: str, from_sequence: int = 0, to_sequence: int | None = None
) -> Select[Any]:
    """One tenant's record rows (`record_text.ROW_FIELDS`) in sequence order."""
    table = AuditRecord.__table__
    statement = (
        select(*_RECORD_COLUMNS)
        .where(table.c.tenant_id == tenant_id, table.c.sequence_number >= from_sequence)
        .order_by(table.c.sequence_number)
    )
    if to_sequence is not None:
        statement = statement.where(table.c.sequence_number <= to_sequence)
    return statement


@dataclass(frozen=True, slots=True)
class SequenceRange:
    """Sequences `first` up to `last` (None: up to the end of the chain)."""

    first: int = 0
    last: int | None = None

    def describe(self) -> str:
        return f"sequences {self.first}..{'' if self.last is None else self.last}"


WHOLE_CHAIN: Final = SequenceRange()


@dataclass(frozen=True, slots=True)
class TenantOverview:
    """A tenant as `status` shows it: the recorded head and how many records exist."""

    tenant_id: str
    last_sequence: int | None
    last_hash: str | None
    last_timestamp: datetime | None
    records: int


@dataclass(frozen=True, slots=True)
class VerificationRun:
    """The latest row of `audit_verification_log` for one tenant."""

    tenant_id: str
    valid: bool
    records_checked: int
    started_at: datetime
    errors: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """A quarantined message; raw bytes are loaded only by `AuditReader.rejection`."""

    id: int
    rejected_at: datetime
    consumer_group: str
    topic: str
    partition: int
    offset: int
    kafka_timestamp: datetime | None
    tenant_id: str | None
    audit_id: str | None
    reason: str
    value_size: int | None
    raw_key: bytes | None = None
    raw_value: bytes | None = None


_REJECT_SUMMARY_COLUMNS: Final = (
    AuditRejectedEvent.id, AuditRejectedEvent.rejected_at, AuditRejectedEvent.consumer_group,
    AuditRejectedEvent.topic, AuditRejectedEvent.partition, AuditRejectedEvent.offset,
    AuditRejectedEvent.kafka_timestamp, AuditRejectedEvent.tenant_id,
    AuditRejectedEvent.audit_id, AuditRejectedEvent.reason,
    func.octet_length(AuditRejectedEvent.raw_value),
)


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A row of audit_checkpoints."""

    tenant_id: str
    tree_size: int
    root_hash: bytes
    key_name: str
    created_at: datetime
    note: str


@dataclass(frozen=True, slots=True)
class ReconciliationRun:
    """The latest row of `audit_reconciliation_log`."""

    finished_at: datetime
    partitions: list[int]
    counts: dict[str, int]
    findings: int
    ok: bool
    error: str | None


_PRODUCER_FIELDS: Final = (
    *(f for f in EVENT_FIELDS if f not in _JSONB_FIELDS), "sequence_number",
    "context", "decision", "outcome",
)
"""What reconcile compares (the producer's fields) and reports (the sequence); the links
are verify's business and are not read."""
_COORDINATED_RECORD_COLUMNS: Final = (
    AuditRecord.__table__.c.kafka_partition, AuditRecord.__table__.c.kafka_offset,
    *(_hashed_column(field) for field in _PRODUCER_FIELDS[:-3]),
    # The three JSONB values as one JSON array: one json.loads per row instead of three.
    cast(func.json_build_array(*(AuditRecord.__table__.c[f] for f in _PRODUCER_FIELDS[-3:])),
         Text),
)
_STORED_REJECT_COLUMNS: Final = (
    AuditRejectedEvent.id, AuditRejectedEvent.partition, AuditRejectedEvent.offset,
    AuditRejectedEvent.raw_key, AuditRejectedEvent.raw_value, AuditRejectedEvent.tenant_id,
    AuditRejectedEvent.audit_id,
)


def _stored_record(row: Sequence[Any]) -> StoredRecord:
    values = [*row[2:-1], *json.loads(row[-1])]
    return StoredRecord(row[0], row[1], dict(zip(_PRODUCER_FIELDS, values, strict=True)))


class ReconciliationSnapshot:
    """What `reconcile` compares with the broker, all from ONE REPEATABLE READ snapshot:
    the stored offsets, the records and rejects by (partition, offset), and the redelivery
    lookup. The daemon commits rows and offsets together, so in one snapshot no row can lie
    beyond its partition's stored offset, however much it commits meanwhile.
    """

    def __init__(self, connection: Connection, consumer_group: str, topic: str):
        self._connection = connection
        self._streaming = connection.execution_options(
            stream_results=True, yield_per=STREAM_CHUNK_ROWS)
        self.consumer_group = consumer_group
        self.topic = topic

    def export(self) -> str:
        """An id with which other sessions see this same snapshot (worker processes), valid
        while this transaction lasts."""
        with translated_errors("exporting the snapshot"):
            return str(self._connection.execute(text("SELECT pg_export_snapshot()")).scalar())

    def stored_offsets(self) -> dict[int, int]:
        """The next offset per partition, as committed in this snapshot."""
        offsets = AuditConsumerOffset
        with translated_errors("reading stored offsets"):
            rows = self._connection.execute(
                select(offsets.partition, offsets.next_offset).where(
                    offsets.consumer_group == self.consumer_group, offsets.topic == self.topic)
            ).all()
        return {partition: offset for partition, offset in rows}

    def stray_partitions(self, partition_count: int) -> set[int]:
        """Partitions outside [0, partition_count) that records or rejects of the topic name
        (two index range probes): their rows cannot have come from the topic."""
        records, rejects = AuditRecord.__table__.c, AuditRejectedEvent
        with translated_errors("looking for rows of unknown partitions"):
            found = self._connection.execute(
                select(records.kafka_partition).where(
                    records.kafka_topic == self.topic,
                    or_(records.kafka_partition < 0, records.kafka_partition >= partition_count))
                .union(select(rejects.partition).where(
                    rejects.consumer_group == self.consumer_group, rejects.topic == self.topic,
                    or_(rejects.partition < 0, rejects.partition >= partition_count)))
            ).scalars().all()
        return set(found)

    def unplaced_records(self) -> Iterator[StoredRecord]:
        """Records stored without coordinates: the genesis records, and any forged one."""
        table = AuditRecord.__table__
        statement = select(*_COORDINATED_RECORD_COLUMNS).where(table.c.kafka_topic.is_(None))
        with translated_errors("reading records without coordinates"):
            for row in self._streaming.execute(statement):
                yield _stored_record(row)

    def records(self, partition: int, from_offset: int) -> Iterator[StoredRecord]:
        """The topic's records of `partition` from `from_offset` on, in offset order."""
        table = AuditRecord.__table__
        statement = (
            select(*_COORDINATED_RECORD_COLUMNS)
            .where(table.c.kafka_topic == self.topic, table.c.kafka_partition == partition,
                   table.c.kafka_offset >= from_offset)
            .order_by(table.c.kafka_offset)
        )
        with translated_errors(f"reading the records of partition {partition}"):
            for row in self._streaming.execute(statement):
                yield _stored_record(row)

    def rejects(self, partition: int, from_offset: int) -> Iterator[StoredReject]:
        """This group's rejects of `partition` from `from_offset` on, in offset order."""
        rejects = AuditRejectedEvent
        statement = (
            select(*_STORED_REJECT_COLUMNS)
            .where(rejects.consumer_group == self.consumer_group, rejects.topic == self.topic,
                   rejects.partition == partition, rejects.offset >= from_offset)
            .order_by(rejects.offset, rejects.id)
        )
        with translated_errors(f"reading the rejects of partition {partition}"):
            for row in self._streaming.execute(statement):
                yield StoredReject(*row)

    def chained(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], StoredRecord]:
        """Records chained for these (tenant_id, audit_id) pairs, wherever they are stored.

        One index probe per pair via unnest (a large IN list of row values plans badly).
        """
        if not keys:
            return {}
        table = AuditRecord.__table__
        wanted = func.unnest(
            cast(list(k[0] for k in keys), ARRAY(Text)),
            cast(list(k[1] for k in keys), ARRAY(UUID(as_uuid=False))),
        ).table_valued("tenant_id", "audit_id").render_derived(name="wanted")
        statement = select(*_COORDINATED_RECORD_COLUMNS).join(
            wanted, (table.c.tenant_id == wanted.c.tenant_id)
            & (table.c.audit_id == wanted.c.audit_id))
        with translated_errors("looking up chained audit_ids"):
            records = [_stored_record(row) for row in self._connection.execute(statement)]
        return {(r.tenant_id, r.audit_id): r for r in records}


class AuditReader:
    """Read-only access to the audit store."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def stored_offsets(
        self, group: str, topic: str, partitions: Sequence[int] | None = None
    ) -> dict[int, int]:
        """The next offset per partition (all partitions when None) as committed in the
        database."""
        statement = select(AuditConsumerOffset.partition, AuditConsumerOffset.next_offset).where(
            AuditConsumerOffset.consumer_group == group, AuditConsumerOffset.topic == topic
        )
        if partitions is not None:
            statement = statement.where(AuditConsumerOffset.partition.in_(list(partitions)))
        with translated_errors("reading stored offsets"), Session(self.engine) as session:
            rows = session.execute(statement).all()
        return {partition: offset for partition, offset in rows}

    def heads(self) -> dict[str, ChainHead]:
        """Every tenant's recorded head."""
        with translated_errors("reading chain heads"), Session(self.engine) as session:
            rows = session.execute(
                select(
                    AuditChainState.tenant_id,
                    AuditChainState.last_sequence,
                    AuditChainState.last_hash,
                ).order_by(AuditChainState.tenant_id)
            ).all()
        return {tenant: ChainHead(tenant, sequence, last) for tenant, sequence, last in rows}

    def tenants_with_records(self) -> list[str]:
        """Tenants that have records, whether or not they have a head (a lost head is a break)."""
        with translated_errors("listing tenants"), Session(self.engine) as session:
            return list(
                session.scalars(select(AuditRecord.tenant_id).distinct().order_by("tenant_id"))
            )

    def record_count(self, tenant_id: str | None = None) -> int:
        statement = select(func.count()).select_from(AuditRecord)
        if tenant_id is not None:
            statement = statement.where(AuditRecord.tenant_id == tenant_id)
        with translated_errors("counting records"), Session(self.engine) as session:
            return int(session.scalar(statement) or 0)

    def read_chain_rows(
        self, tenant_id: str, from_sequence: int = 0, to_sequence: int | None = None
    ) -> tuple[ChainHead, Iterator[RecordRow]]:
        """The tenant's head and its record rows (`record_text.ROW_FIELDS`), both from ONE
        snapshot, the rows streamed through a server-side cursor in constant memory.

        The daemon commits records and head together; reading them in separate snapshots
        while it runs would see records newer than the head and report a false break.
        """
        stream = self._chain_stream(tenant_id, from_sequence, to_sequence)
        head = next(stream)
        assert isinstance(head, ChainHead)
        return head, stream  # type: ignore[return-value]

    def _chain_stream(
        self, tenant_id: str, from_sequence: int, to_sequence: int | None
    ) -> Iterator[ChainHead | RecordRow]:
        """Yields the head, then the rows, inside one REPEATABLE READ transaction."""
        state = AuditChainState.__table__
        head_query = select(state.c.last_sequence, state.c.last_hash).where(
            state.c.tenant_id == tenant_id
        )
        statement = record_rows_query(tenant_id, from_sequence, to_sequence)
        with (
            translated_errors(f"reading records of tenant {tenant_id!r}"),
            self.engine.connect().execution_options(
                isolation_level="REPEATABLE READ"
            ) as connection,
            connection.begin(),
        ):
            head = connection.execute(head_query).one_or_none()
            yield ChainHead(tenant_id, *head) if head else ChainHead.empty(tenant_id)
            yield from stream_rows(connection, statement, STREAM_CHUNK_ROWS)

    def record_hash_at(self, tenant_id: str, sequence_number: int) -> str | None:
        """The stored record_hash of one record, or None when there is no such record."""
        with translated_errors("reading a record hash"), Session(self.engine) as session:
            return session.scalar(
                select(AuditRecord.record_hash).where(
                    AuditRecord.tenant_id == tenant_id,
                    AuditRecord.sequence_number == sequence_number,
                )
            )

    def tenant_overview(self) -> list[TenantOverview]:
        """Every tenant with a head or records: its head and its actual record count."""
        counts = (
            select(AuditRecord.tenant_id, func.count().label("records"))
            .group_by(AuditRecord.tenant_id)
            .subquery()
        )
        state = AuditChainState.__table__
        tenant = func.coalesce(state.c.tenant_id, counts.c.tenant_id)
        statement = (
            select(tenant, state.c.last_sequence, state.c.last_hash, state.c.last_timestamp,
                   func.coalesce(counts.c.records, 0))
            .select_from(state.outerjoin(counts, state.c.tenant_id == counts.c.tenant_id,
                                         full=True))
            .order_by(tenant)
        )
        with translated_errors("reading tenants"), Session(self.engine) as session:
            rows = session.execute(statement).all()
        return [TenantOverview(*row) for row in rows]

    def rejected_count(self) -> int:
        with translated_errors("counting rejected events"), Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(AuditRejectedEvent)) or 0)

    def rejections(self, limit: int, tenant_id: str | None = None) -> list[RejectedEvent]:
        """The newest quarantined messages first, without their raw bytes."""
        statement = (
            select(*_REJECT_SUMMARY_COLUMNS)
            .order_by(AuditRejectedEvent.id.desc())
            .limit(limit)
        )
        if tenant_id is not None:
            statement = statement.where(AuditRejectedEvent.tenant_id == tenant_id)
        with translated_errors("listing rejected events"), Session(self.engine) as session:
            return [RejectedEvent(*row) for row in session.execute(statement)]

    def rejection(self, rejection_id: int) -> RejectedEvent | None:
        """One quarantined message with its raw key and value bytes."""
        statement = select(
            *_REJECT_SUMMARY_COLUMNS, AuditRejectedEvent.raw_key, AuditRejectedEvent.raw_value
        ).where(AuditRejectedEvent.id == rejection_id)
        with translated_errors("reading a rejected event"), Session(self.engine) as session:
            row = session.execute(statement).one_or_none()
        return None if row is None else RejectedEvent(*row)

    def can_record_verifications(self) -> bool:
        """Whether this login may append to audit_verification_log (a read-only auditor,
        member of audit_reader, may not: its runs are simply not recorded)."""
        statement = text(
            "SELECT has_table_privilege('audit_verification_log', 'INSERT') "
            "AND has_sequence_privilege('audit_verification_log_id_seq', 'USAGE')"
        )
        with translated_errors("checking privileges"), Session(self.engine) as session:
            return bool(session.scalar(statement))

    def latest_verifications(self) -> dict[str, VerificationRun]:
        """Each tenant's most recent row in audit_verification_log (rows are appended as runs
        finish, so the highest id is the latest)."""
        log = AuditVerificationLog
        latest = select(func.max(log.id)).group_by(log.tenant_id)
        statement = select(
            log.tenant_id, log.valid, log.records_checked, log.started_at, log.errors
        ).where(log.id.in_(latest))
        with translated_errors("reading the verification log"), Session(self.engine) as session:
            return {row[0]: VerificationRun(*row) for row in session.execute(statement)}

    def checkpoint_sizes(self) -> dict[str, int]:
        """Each tenant's newest checkpointed tree size in audit_checkpoints."""
        checkpoint = AuditCheckpoint
        statement = select(checkpoint.tenant_id, func.max(checkpoint.tree_size)).group_by(
            checkpoint.tenant_id)
        with translated_errors("reading checkpoint sizes"), Session(self.engine) as session:
            return {tenant: int(size) for tenant, size in session.execute(statement)}

    def checkpoints_after(self, published: Mapping[str, int]) -> list[SignedCheckpoint]:
        """The checkpoints of these tenants beyond the given tree sizes, in tenant and
        size order: what a sink that holds up to those sizes still lacks (one query)."""
        if not published:
            return []
        tenants, sizes = zip(*sorted(published.items()), strict=True)
        statement = text(
            "SELECT c.tenant_id, c.tree_size, c.root_hash, c.note "
            "FROM unnest(CAST(:tenants AS text[]), CAST(:sizes AS bigint[])) "
            "AS p(tenant_id, tree_size) "
            "JOIN audit_checkpoints AS c "
            "ON c.tenant_id = p.tenant_id AND c.tree_size > p.tree_size "
            "ORDER BY c.tenant_id, c.tree_size"
        )
        with translated_errors("reading checkpoints"), Session(self.engine) as session:
            rows = session.execute(statement, {"tenants": list(tenants), "sizes": list(sizes)})
            return [SignedCheckpoint(tenant, size, bytes(root), note)
                    for tenant, size, root, note in rows]

    def checkpoints(self, tenant_id: str | None = None) -> list[CheckpointRow]:
        """Stored checkpoints (of one tenant when given), by tenant and size."""
        checkpoint = AuditCheckpoint
        statement = select(
            checkpoint.tenant_id, checkpoint.tree_size, checkpoint.root_hash,
            checkpoint.key_name, checkpoint.created_at, checkpoint.note,
        ).order_by(checkpoint.tenant_id, checkpoint.tree_size)
        if tenant_id is not None:
            statement = statement.where(checkpoint.tenant_id == tenant_id)
        with translated_errors("reading checkpoints"), Session(self.engine) as session:
            return [CheckpointRow(t, s, bytes(r), k, c, n)
                    for t, s, r, k, c, n in session.execute(statement)]

    @contextmanager
    def reconciliation_snapshot(
        self, consumer_group: str, topic: str, shared: str | None = None
    ) -> Iterator[ReconciliationSnapshot]:
        """A read-only REPEATABLE READ transaction for one reconcile run; with `shared` (an
        id from `ReconciliationSnapshot.export`) it sees exactly that transaction's data."""
        with (
            translated_errors("opening a snapshot"),
            self.engine.connect().execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            ) as connection,
            connection.begin(),
        ):
            if shared is not None:
                connection.execute(text("SET TRANSACTION SNAPSHOT :id"), {"id": shared})
            yield ReconciliationSnapshot(connection, consumer_group, topic)

    def can_read_rejected_payloads(self) -> bool:
        """Whether this login may read the quarantined bytes (audit_writer may not)."""
        statement = text(
            "SELECT has_column_privilege('audit_rejected_events', 'raw_key', 'SELECT') "
            "AND has_column_privilege('audit_rejected_events', 'raw_value', 'SELECT')"
        )
        with translated_errors("checking privileges"), Session(self.engine) as session:
            return bool(session.scalar(statement))

    def can_record_reconciliations(self) -> bool:
        """Whether this login may append to audit_reconciliation_log."""
        statement = text(
            "SELECT has_table_privilege('audit_reconciliation_log', 'INSERT') "
            "AND has_sequence_privilege('audit_reconciliation_log_id_seq', 'USAGE')"
        )
        with translated_errors("checking privileges"), Session(self.engine) as session:
            return bool(session.scalar(statement))

    def latest_reconciliation(self, *, completed: bool = False) -> ReconciliationRun | None:
        """The most recent row of audit_reconciliation_log (`completed`: the most recent
        run that did not stop on an error), or None."""
        log = AuditReconciliationLog
        statement = select(log.finished_at, log.partitions, log.counts, log.findings, log.ok,
                           log.error).order_by(log.id.desc()).limit(1)
        if completed:
            statement = statement.where(log.error.is_(None))
        with translated_errors("reading the reconciliation log"), Session(self.engine) as session:
            row = session.execute(statement).one_or_none()
        return None if row is None else ReconciliationRun(*row)
