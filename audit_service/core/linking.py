"""Render each event once, before its batch transaction, so chaining under the locks is cheap.

A record's canonical text (what is hashed) and its COPY row differ from one possible link to
the next only in four fields: sequence_number, previous_hash, ingested_at and, in the row,
record_hash. `render` builds both texts once per event, as parts to be joined around those
fields (no placeholder that content could imitate); it runs while the previous batch
commits. `link` fills them in while the tenant's head is locked, which leaves string
concatenation and one SHA-256 per event on the transaction's critical path. The hash is
exactly `chain.compute_record_hash` of the full record; the tests compare the two (and the
rows with `record_mapping.copy_line`) over every kind of value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

from audit_service.core.chain import ChainHead, compact_json_encoder
from audit_service.core.record_mapping import open_row

_encode_sorted = compact_json_encoder(sort_keys=True)


class PendingRecord(NamedTuple):
    """A validated event as texts with the links left open: nothing but strings, so the
    validation worker can send it as one string (see `ingest.validation_pool`)."""

    tenant_id: str
    audit_id: str
    timestamp: str
    hash_parts: tuple[str, ...]
    """Same content (every producer-supplied field) <=> same hash_parts."""
    row_parts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LinkedRecord:
    """A pending record linked onto a head: its canonical text, hash and finished COPY row."""

    sequence_number: int
    canonical: str
    record_hash: str
    row: str

    def as_record(self) -> dict[str, Any]:
        """The full hashed dict plus record_hash: canonical JSON parses back to the exact
        values that were hashed (for row-by-row inserts)."""
        record: dict[str, Any] = json.loads(self.canonical)
        return record | {"record_hash": self.record_hash}


def _strings(values: list[str]) -> str:
    return "[" + ",".join(map(encode_basestring_ascii, values)) + "]"


def canonical_parts(event: Mapping[str, Any]) -> tuple[str, ...]:
    """The canonical text of `event`'s producer-supplied fields, cut open where
    ingested_at, previous_hash and sequence_number go.

    Written out key by key in sorted order (what `chain.canonical_json` does with
    `sort_keys`), which saves building and sorting the record dict for every event. Every
    string is escaped, since stored records are compared this way too (a redelivery or a
    conflict), except the timestamp: `chain.format_timestamp` renders it, never a producer.
    """
    text = encode_basestring_ascii
    return (
        f'{{"actor_id":{text(event["actor_id"])},'
        f'"actor_permissions":{_strings(event["actor_permissions"])},'
        f'"actor_type":{text(event["actor_type"])},"alert_id":{text(event["alert_id"])},'
        f'"audit_id":{text(event["audit_id"])},"context":{_encode_sorted(event["context"])},'
        f'"decision":{_encode_sorted(event["decision"])},'
        f'"entity_ids":{_strings(event["entity_ids"])},'
        f'"event_category":{text(event["event_category"])},'
        f'"event_type":{text(event["event_type"])},"ingested_at":',
        f',"investigation_id":{text(event["investigation_id"])},'
        f'"outcome":{_encode_sorted(event["outcome"])},"previous_hash":',
        f',"record_version":{text(event["record_version"])},"sequence_number":',
        f',"severity":{text(event["severity"])},'
        f'"source_service":{text(event["source_service"])},'
        f'"tenant_id":{text(event["tenant_id"])},"timestamp":"{event["timestamp"]}"}}',
    )


def render(event: Mapping[str, Any], topic: str, partition: int, offset: int) -> PendingRecord:
    """Render a validated event (see `events.parse_event`) for `link`."""
    return PendingRecord(event["tenant_id"], event["audit_id"], event["timestamp"],
                         canonical_parts(event), open_row(event, topic, partition, offset))


def link(pending: PendingRecord, head: ChainHead, ingested_at: str) -> LinkedRecord:
    """Link `pending` onto a non-empty `head`; `ingested_at` is already rendered
    (`chain.format_timestamp`), as are hex hashes: neither needs JSON escaping."""
    if head.is_empty:
        raise ValueError(f"tenant {head.tenant_id!r} has no genesis record yet")
    sequence = str(head.last_sequence + 1)
    previous = head.last_hash
    h0, h1, h2, h3 = pending.hash_parts
    canonical = f'{h0}"{ingested_at}"{h1}"{previous}"{h2}{sequence}{h3}'
    record_hash = hashlib.sha256(canonical.encode("ascii")).hexdigest()
    r0, r1, r2, r3, r4 = pending.row_parts
    row = f"{r0}{sequence}{r1}{previous}{r2}{ingested_at}{r3}{record_hash}{r4}"
    return LinkedRecord(head.last_sequence + 1, canonical, record_hash, row)
