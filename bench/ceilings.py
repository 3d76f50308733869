"""The two ceilings no implementation can beat on this machine: draining the topic with
kafka-python (poll + json.loads, nothing else) and COPYing audit_records-shaped rows."""

from __future__ import annotations

import io
import json
import time

from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import create_engine

from audit_service.core.chain import ChainHead, advance, chain_event, genesis_record
from audit_service.core.record_mapping import row_values

COPY_COLUMNS = (
    "tenant_id", "sequence_number", "audit_id", "timestamp", "ingested_at", "event_type",
    "event_category", "severity", "actor_type", "actor_id", "actor_permissions",
    "investigation_id", "alert_id", "entity_ids", "context", "decision", "outcome",
    "source_service", "record_version", "previous_hash", "record_hash",
)


def drain_rate(bootstrap: str, topic: str, expected: int) -> float:
    """Events/s for poll + json.loads over the whole topic (assigned, no group)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_poll_records=2000, fetch_max_bytes=52_428_800)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    count = 0
    started = time.perf_counter()
    while count < expected:
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                json.loads(record.value)
            count += len(records)
    elapsed = time.perf_counter() - started
    consumer.close()
    return count / elapsed


def _array(values: list[str]) -> str:
    return "{" + ",".join(json.dumps(v) for v in values) + "}"


def _copy_line(values: dict) -> str:
    fields = []
    for column in COPY_COLUMNS:
        value = values[column]
        if isinstance(value, list):
            value = _array(value)
        elif isinstance(value, dict):
            value = json.dumps(value, separators=(",", ":"))
        text = str(value)
        fields.append(text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n"))
    return "\t".join(fields) + "\n"


def copy_rate(database_url: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Rows/s for COPY of already-built records (building them is not timed)."""
    from datetime import UTC, datetime

    from audit_service.core.events import ValidationLimits, parse_event

    now = datetime.now(UTC)
    heads: dict[str, ChainHead] = {}
    buffer = io.StringIO()
    for key, value in messages:
        event = parse_event(key, value, ValidationLimits(), now)
        tenant = event["tenant_id"]
        if tenant not in heads:
            genesis = genesis_record(tenant, now)
            buffer.write(_copy_line(row_values(genesis, None, None, None)))
            heads[tenant] = advance(ChainHead.empty(tenant), genesis)
        record = chain_event(heads[tenant], event, now)
        heads[tenant] = advance(heads[tenant], record)
        buffer.write(_copy_line(row_values(record, None, None, None)))
    rows = len(messages) + len(heads)
    engine = create_engine(database_url)
    connection = engine.raw_connection()
    try:
        buffer.seek(0)
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.copy_expert(
                f"COPY audit_records ({', '.join(COPY_COLUMNS)}) FROM STDIN", buffer
            )
        connection.commit()
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
        engine.dispose()
    return rows / elapsed
