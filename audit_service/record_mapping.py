"""Map between the hashed record dict and `audit_records` rows, in both directions.

The reverse direction is what makes verification possible: a row read back from
PostgreSQL must give the exact dict that was hashed (timestamps rendered the one way,
JSONB values in their stable form).
"""

from __future__ import annotations

from typing import Any

from audit_service.chain import HASHED_FIELDS, format_timestamp
from audit_service.models import AuditRecord

_TIMESTAMP_FIELDS = ("timestamp", "ingested_at")


def row_values(
    record: dict[str, Any], topic: str | None, partition: int | None, offset: int | None
) -> dict[str, Any]:
    """Column values for inserting `record`; Kafka coordinates are unhashed metadata."""
    values = {field: record[field] for field in HASHED_FIELDS}
    values["record_hash"] = record["record_hash"]
    values["kafka_topic"] = topic
    values["kafka_partition"] = partition
    values["kafka_offset"] = offset
    return values


def record_from_row(row: AuditRecord) -> dict[str, Any]:
    """The hashed dict (plus record_hash) exactly as it was hashed when chained."""
    record = {field: getattr(row, field) for field in HASHED_FIELDS}
    for field in _TIMESTAMP_FIELDS:
        record[field] = format_timestamp(record[field])
    record["record_hash"] = row.record_hash
    return record
