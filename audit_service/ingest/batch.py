"""The batch transaction: the one place where events become chained records.

Contract of `commit_prepared` (the core promise of SPEC section 5):
- It runs ONE database transaction for the whole polled batch and commits it; only after
  it returns may the caller commit the offsets to Kafka.
- It MUST lock the partitions' offset rows, then the tenants' heads, each in sorted order,
  so concurrent instances cannot deadlock or fork a chain.
- Messages below the stored offset were already committed (by us before a crash, or by
  another instance) and are skipped. A redelivered audit_id with identical content is a
  no-op, not an error; the same audit_id with different content is quarantined.
  A batch is first chained without looking its audit_ids up (the unique key on
  (tenant_id, audit_id) refuses a stored one, rolling the batch back); only a batch the
  key refused is redone with the lookup, which tells duplicates from conflicts.
- Every message ends in exactly one place: a chained record, a duplicate no-op, or a row
  in `audit_rejected_events` with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from audit_service.core.chain import (
    ChainHead,
    advance,
    format_timestamp,
    genesis_record,
)
from audit_service.core.events import EventRejected, ValidationLimits, parse_event
from audit_service.core.linking import PendingRecord, canonical_parts, link, render
from audit_service.core.merkle import Node, leaf_hash
from audit_service.core.messages import ConsumedMessage
from audit_service.core.outcomes import (
    REJECTED_CONFLICT,
    REJECTED_REFUSED,
    BatchOutcome,
)
from audit_service.core.record_mapping import copy_line, row_values
from audit_service.core.tiles import nodes_to_store
from audit_service.core.tree_state import TreeState
from audit_service.ingest.checkpointing import Checkpointer
from audit_service.storage.engine import RecordRefused, translated_errors
from audit_service.storage.store import AuditIdTaken, ChainStore, NewCheckpoint, Rejection

log = logging.getLogger(__name__)

class _BatchChainer:
    """Chains one batch's events inside an open transaction."""

    def __init__(self, store: ChainStore, attempt: _Attempt, now: datetime,
                 checkpointer: Checkpointer | None):
        self.store = store
        self.isolate_rows = attempt.isolate_rows
        self.look_up_chained = attempt.look_up_chained
        self.now = now
        self.checkpointer = checkpointer
        self.copy_lines: list[str] = []
        self.rejections: list[Rejection] = []
        self.ingested_at = format_timestamp(now)
        self.heads: dict[str, ChainHead] = {}
        self.trees: dict[str, TreeState] = {}
        self.tree_nodes: list[tuple[str, Node]] = []
        self.last_timestamps: dict[str, str] = {}
        self.outcome = BatchOutcome()

    def reject(self, message: ConsumedMessage, reason: str, kind: str, tenant: str | None,
               audit_id: str | None) -> None:
        log.warning("event rejected", extra={"partition": message.partition,
                    "offset": message.offset, "tenant_id": tenant, "audit_id": audit_id,
                    "kind": kind, "reason": reason})
        self.rejections.append(Rejection(
            message.topic, message.partition, message.offset, message.kafka_timestamp,
            message.key, message.value, reason, tenant, audit_id,
        ))
        self.outcome.rejected += 1
        self.outcome.rejected_by_kind[kind] += 1

    def append(self, row: str, record: Callable[[], dict[str, Any]],
               message: ConsumedMessage | None) -> str | None:
        """Queue a record's COPY row, or in isolation mode insert the record at once (built
        by `record`, only then); returns PostgreSQL's refusal reason or None."""
        if self.isolate_rows:
            coordinates = (
                (message.topic, message.partition, message.offset) if message
                else (None, None, None)
            )
            refusal = self.store.insert_record_isolated(row_values(record(), *coordinates))
            if refusal:
                return f"PostgreSQL refused the record: {refusal}"
        else:
            self.copy_lines.append(row)
        return None

    def advance_head(self, head: ChainHead, timestamp: str) -> None:
        """Move a tenant's head past a record just appended; every appended record, genesis
        included, must go through here, or its head is not saved with the batch (an empty
        head must never survive a commit that stored a genesis), and the record is a leaf
        of the tenant's Merkle tree (whose completed nodes at levels 8, 16, ... are kept
        for proofs)."""
        self.heads[head.tenant_id] = head
        tree = self.trees[head.tenant_id].tree
        # A plain loop: for 255 records in 256 the slice is empty, and a generator per
        # record would cost more than the rare node.
        for node in nodes_to_store(tree.append(leaf_hash(bytes.fromhex(head.last_hash)))):
            self.tree_nodes.append((head.tenant_id, node))
        self.last_timestamps[head.tenant_id] = timestamp
        self.outcome.tenants.add(head.tenant_id)

    def start_chain(self, tenant: str) -> str | None:
        """Append a new tenant's genesis record; returns a refusal reason or None."""
        genesis = genesis_record(tenant, self.now)
        refusal = self.append(copy_line(genesis, None, None, None), lambda: genesis, None)
        if refusal is None:
            self.advance_head(advance(self.heads[tenant], genesis), genesis["timestamp"])
            self.trees[tenant].checkpointed_at = self.now  # its checkpoint clock starts
            self.outcome.genesis += 1
        return refusal

    def chain(self, message: ConsumedMessage, pending: PendingRecord) -> bool:
        """Chain one event (after its tenant's genesis when new); False if it was refused."""
        tenant = pending.tenant_id
        if self.heads[tenant].is_empty:
            refusal = self.start_chain(tenant)
            if refusal:
                self.reject(message, f"cannot create genesis: {refusal}", REJECTED_REFUSED,
                            tenant, pending.audit_id)
                return False
        linked = link(pending, self.heads[tenant], self.ingested_at)
        refusal = self.append(linked.row, linked.as_record, message)
        if refusal:
            self.reject(message, refusal, REJECTED_REFUSED, tenant, pending.audit_id)
            return False
        self.advance_head(ChainHead(tenant, linked.sequence_number, linked.record_hash),
                          pending.timestamp)
        self.outcome.chained += 1
        self.outcome.event_timestamps.append(pending.timestamp)
        return True

    def sign_due_checkpoints(self) -> list[NewCheckpoint]:
        """Checkpoints of the trees this batch made due, signed before the commit that holds
        their records (so the database never has a checkpoint beyond its records)."""
        if self.checkpointer is None:
            return []
        signed = []
        for tenant in sorted(self.outcome.tenants):
            if self.checkpointer.due(self.trees[tenant], self.now):
                signed.append(self.checkpointer.sign(tenant, self.trees[tenant], self.now))
                self.outcome.checkpointed.append(tenant)
        return signed

    def run(self, batch: PreparedBatch) -> None:
        messages = batch.messages
        stored = self.store.lock_offsets([m.partition for m in messages])
        for message in messages:
            current = self.outcome.next_offsets.get(message.partition, stored[message.partition])
            self.outcome.next_offsets[message.partition] = max(current, message.offset + 1)
        fresh = [
            (message, result) for message, result in zip(messages, batch.parsed, strict=True)
            if message.offset >= stored[message.partition]
        ]
        self.outcome.already_committed = len(messages) - len(fresh)

        events = [e for _, e in fresh if isinstance(e, PendingRecord)]
        self.heads, self.trees = self.store.lock_heads(e.tenant_id for e in events)
        known = {
            key: canonical_parts(record) for key, record in
            self.store.find_chained((e.tenant_id, e.audit_id) for e in events).items()
        } if self.look_up_chained else {}
        for message, result in fresh:
            if isinstance(result, EventRejected):
                self.reject(message, result.reason, result.kind, result.tenant_id,
                            result.audit_id)
                continue
            key = (result.tenant_id, result.audit_id)
            if key in known:
                if known[key] == result.hash_parts:
                    self.outcome.duplicates += 1
                else:
                    self.reject(message, f"audit_id {key[1]} is already chained for tenant "
                                f"{key[0]!r} with different content", REJECTED_CONFLICT, *key)
                continue
            if self.chain(message, result):
                known[key] = result.hash_parts

        self.store.copy_records(self.copy_lines)
        self.store.insert_tree_nodes(self.tree_nodes)
        checkpoints = self.sign_due_checkpoints()
        self.store.save_heads(
            [(self.heads[t], self.last_timestamps[t], self.trees[t])
             for t in sorted(self.outcome.tenants)],
            self.ingested_at,
        )
        self.store.insert_checkpoints(checkpoints)
        self.store.insert_rejections(self.rejections)
        self.store.save_offsets(self.outcome.next_offsets)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A polled batch with every message validated and rendered (pure work, no transaction)."""

    messages: Sequence[ConsumedMessage]
    parsed: list[PendingRecord | EventRejected]


def prepare_batch(
    messages: Sequence[ConsumedMessage], limits: ValidationLimits, now: datetime
) -> PreparedBatch:
    """Validate and render every message (see `linking`); done outside the transaction so
    it overlaps the previous batch's commit."""
    parsed: list[PendingRecord | EventRejected] = []
    for message in messages:
        try:
            event = parse_event(message.key, message.value, limits, now)
            parsed.append(render(event, message.topic, message.partition, message.offset))
        except EventRejected as exc:
            parsed.append(exc)
    return PreparedBatch(messages, parsed)


def commit_prepared(
    engine: Engine, batch: PreparedBatch, consumer_group: str,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    checkpointer: Checkpointer | None = None,
) -> BatchOutcome:
    """Chain a prepared batch in one committed transaction (see the module contract).

    The first attempt skips the lookup of already chained audit_ids (one index probe per
    event, ~15% of a batch's time, for redeliveries under new offsets, which are rare):
    if the unique key refuses a stored audit_id, the batch is rolled back and redone with
    the lookup. If PostgreSQL refuses the content of some row, the transaction is rolled
    back and the batch is redone with every record in its own savepoint, so only the
    refused rows are quarantined. Transient failures propagate as TransientError for the
    caller to retry.
    """
    if not batch.messages:
        return BatchOutcome()
    try:
        try:
            return _run_transaction(engine, batch, consumer_group, clock, checkpointer,
                                    _OPTIMISTIC)
        except AuditIdTaken:
            log.info("batch holds an audit_id already chained, redoing it with the lookup")
            return _run_transaction(engine, batch, consumer_group, clock, checkpointer,
                                    _LOOKED_UP)
    except RecordRefused as exc:
        log.warning("batch refused by PostgreSQL, retrying row by row", extra={"error": str(exc)})
        return _run_transaction(engine, batch, consumer_group, clock, checkpointer, _ISOLATED)


def commit_batch(
    engine: Engine, messages: Sequence[ConsumedMessage], consumer_group: str,
    limits: ValidationLimits, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BatchOutcome:
    """Validate and chain a polled batch in one committed transaction."""
    return commit_prepared(
        engine, prepare_batch(messages, limits, clock()), consumer_group, clock
    )


def move_stored_offset(
    engine: Engine, consumer_group: str, topic: str, partition: int, expected: int, new: int
) -> bool:
    """Move one partition's stored offset from `expected` to `new` in its own committed
    transaction; False when another instance changed it first.

    The one sanctioned way an offset moves other than by a batch: batches skip every
    message below the stored offset, so an offset left beyond a replaced log would skip the
    new log's first events. The caller logs why (offset_policy) before calling this.
    """
    with translated_errors("moving a stored offset"), Session(engine) as session, session.begin():
        return ChainStore(session, consumer_group, topic).move_offset(partition, expected, new)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """How a batch transaction is tried: with or without the audit_id lookup, records
    copied together or each inserted in its own savepoint."""

    look_up_chained: bool
    isolate_rows: bool


_OPTIMISTIC = _Attempt(look_up_chained=False, isolate_rows=False)
_LOOKED_UP = _Attempt(look_up_chained=True, isolate_rows=False)
_ISOLATED = _Attempt(look_up_chained=True, isolate_rows=True)


def _run_transaction(
    engine: Engine, batch: PreparedBatch, consumer_group: str,
    clock: Callable[[], datetime], checkpointer: Checkpointer | None, attempt: _Attempt,
) -> BatchOutcome:
    topic = batch.messages[0].topic
    with translated_errors("committing the batch"), Session(engine) as session, session.begin():
        chainer = _BatchChainer(
            ChainStore(session, consumer_group, topic), attempt, clock(), checkpointer
        )
        chainer.run(batch)
    return chainer.outcome
