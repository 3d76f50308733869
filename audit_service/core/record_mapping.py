"""Map between the hashed record dict and `audit_records` rows, in both directions.

The reverse direction is what makes verification possible: a row read back from
PostgreSQL must give the exact dict that was hashed (timestamps rendered the one way,
JSONB values in their stable form).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit_service.core.chain import HASHED_FIELDS, compact_json_encoder, format_timestamp

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


def record_from_row(row: Any) -> dict[str, Any]:
    """The hashed dict (plus record_hash) exactly as it was hashed when chained; `row` is
    an `AuditRecord` or anything with its attributes (the core never imports the models)."""
    record = {field: getattr(row, field) for field in HASHED_FIELDS}
    for field in _TIMESTAMP_FIELDS:
        record[field] = format_timestamp(record[field])
    record["record_hash"] = row.record_hash
    return record


COPY_COLUMNS = (
    *HASHED_FIELDS, "record_hash", "kafka_topic", "kafka_partition", "kafka_offset",
)
"""Column order of the COPY rows built by `copy_line`."""

_NULL = "\\N"
_encode_json = compact_json_encoder(sort_keys=False)


def _text(value: str) -> str:
    """Escape for COPY text format (replace() beats translate() on these short strings)."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                .replace("\r", "\\r"))
    return value


def _array(values: list[str]) -> str:
    """A TEXT[] literal with every element quoted, then escaped for COPY."""
    if not values:
        return "{}"
    inner = '","'.join(values)
    if "\\" in inner or '"' in "".join(values):  # rare: escape element by element
        inner = '","'.join(item.replace("\\", "\\\\").replace('"', '\\"') for item in values)
    return _text('{"' + inner + '"}')


def _jsonb(value: dict[str, Any]) -> str:
    # ASCII-escaped JSON has no raw control characters: only backslashes need escaping.
    return _encode_json(value).replace("\\", "\\\\")


def open_row(
    event: Mapping[str, Any], topic: str | None, partition: int | None, offset: int | None
) -> tuple[str, str, str, str, str]:
    """One row of COPY ... FROM STDIN (text format) holding the same values as `row_values`,
    cut open around the columns that depend on the link: sequence_number, previous_hash,
    ingested_at and record_hash, in that order (`copy_line` fills them in).

    Written out field by field because it runs once per event on the hot path. Fields the
    validator restricts (ids, hashes, taxonomy values, timestamps) cannot contain COPY's
    special characters and are not escaped.
    """
    return (
        f"{event['audit_id']}\t{event['tenant_id']}\t", "\t", f"\t{event['timestamp']}\t",
        f"\t{event['event_type']}\t{event['event_category']}\t{event['severity']}"
        f"\t{event['actor_type']}\t{_text(event['actor_id'])}"
        f"\t{_array(event['actor_permissions'])}\t{_text(event['investigation_id'])}"
        f"\t{_text(event['alert_id'])}\t{_array(event['entity_ids'])}"
        f"\t{_jsonb(event['context'])}\t{_jsonb(event['decision'])}"
        f"\t{_jsonb(event['outcome'])}\t{_text(event['source_service'])}"
        f"\t{_text(event['record_version'])}\t",
        f"\t{_NULL if topic is None else _text(topic)}"
        f"\t{_NULL if partition is None else partition}"
        f"\t{_NULL if offset is None else offset}\n",
    )


def copy_line(
    record: dict[str, Any], topic: str | None, partition: int | None, offset: int | None
) -> str:
    """One row of COPY ... FROM STDIN (text format) for a hashed `record`."""
    r0, r1, r2, r3, r4 = open_row(record, topic, partition, offset)
    return (f"{r0}{record['sequence_number']}{r1}{record['previous_hash']}{r2}"
            f"{record['ingested_at']}{r3}{record['record_hash']}{r4}")
