"""The deliberately naive baseline: one transaction and one Kafka commit per event.

For each message: lock the tenant's head (creating genesis when new), insert the record,
update the head, commit, commit the offset. Same validation and hashing as the service,
so the difference measured is the design of the write path.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from sqlalchemy import create_engine, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from audit_service.core.chain import ChainHead, advance, chain_event, genesis_record
from audit_service.core.events import ValidationLimits, parse_event
from audit_service.core.record_mapping import row_values
from audit_service.storage.models import AuditChainState, AuditRecord


def naive_rate(database_url: str, bootstrap: str, topic: str, events: int) -> float:
    """Events/s of the per-event design over the first `events` messages of the topic."""
    engine = create_engine(database_url)
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"naive-{topic}",
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             session_timeout_ms=6000, heartbeat_interval_ms=1000,
                             max_poll_interval_ms=60000)
    done = 0
    started = None
    while done < events:
        for tp, records in consumer.poll(timeout_ms=1000, max_records=500).items():
            for record in records:
                if done >= events:
                    break
                started = started or time.perf_counter()
                _chain_one(engine, record.key, record.value)
                consumer.commit({TopicPartition(tp.topic, tp.partition):
                                 OffsetAndMetadata(record.offset + 1, "", -1)})
                done += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    engine.dispose()
    return done / elapsed


def _chain_one(engine: object, key: bytes, value: bytes) -> None:
    now = datetime.now(UTC)
    event = parse_event(key, value, ValidationLimits(), now)
    tenant = event["tenant_id"]
    with Session(engine) as session, session.begin():  # type: ignore[arg-type]
        session.execute(pg_insert(AuditChainState).values(
            tenant_id=tenant, last_sequence=-1, last_hash="0" * 64).on_conflict_do_nothing())
        state = session.execute(select(AuditChainState).where(
            AuditChainState.tenant_id == tenant).with_for_update()).scalar_one()
        head = ChainHead(tenant, state.last_sequence, state.last_hash)
        if head.is_empty:
            genesis = genesis_record(tenant, now)
            session.execute(insert(AuditRecord), [row_values(genesis, None, None, None)])
            head = advance(head, genesis)
        record = chain_event(head, event, now)
        session.execute(insert(AuditRecord), [row_values(record, None, None, None)])
        session.execute(update(AuditChainState).where(AuditChainState.tenant_id == tenant)
                        .values(last_sequence=record["sequence_number"],
                                last_hash=record["record_hash"]))
