"""Render each event once, before its batch transaction, so chaining under the locks is cheap.

A record's canonical text (what is hashed) and its COPY row differ from one possible link to
the next only in four fields: sequence_number, previous_hash, ingested_at and, in the row,
record_hash. `render` builds both texts once per event with those fields left open; it runs
while the previous batch commits. `link` fills them in while the tenant's head is locked,
which leaves string concatenation and one SHA-256 per event on the transaction's critical
path. The hash is exactly `chain.compute_record_hash` of the full record; the tests compare
the two (and the rows with `record_mapping.copy_line`) over every kind of value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from audit_service.core.chain import EVENT_FIELDS, ChainHead, canonical_json
from audit_service.core.events import EventRejected
from audit_service.core.record_mapping import copy_line

_OPEN: Final = "\x00"
"""Placeholder for an open field. Validation rejects NUL anywhere in an event (keys and
values), so in a rendered text it can only mark a placeholder."""
_OPEN_IN_JSON: Final = json.dumps(_OPEN)
"""The placeholder as the canonical (ASCII-escaped) JSON renders it: `"\\u0000"`."""
_HASH_PARTS: Final = 4
"""Canonical keys are sorted: ingested_at, previous_hash, sequence_number open in that order."""
_ROW_PARTS: Final = 5
"""COPY columns: sequence_number, previous_hash, ingested_at, record_hash open in that order."""


class PendingRecord(NamedTuple):
    """A validated event as texts with the links left open: nothing but strings in a
    NamedTuple, the cheapest shape to pickle between processes (see `ingest.validation_pool`)."""

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


def _with_open_links(event: Mapping[str, Any]) -> dict[str, Any]:
    return {field: event[field] for field in EVENT_FIELDS} | {
        "sequence_number": _OPEN, "previous_hash": _OPEN, "ingested_at": _OPEN,
        "record_hash": _OPEN,
    }


def _split_canonical(record: Mapping[str, Any]) -> tuple[str, ...]:
    parts = tuple(canonical_json(record).split(_OPEN_IN_JSON))
    if len(parts) != _HASH_PARTS:
        raise EventRejected("NUL character in the event", record["tenant_id"],
                            record["audit_id"], kind="nul")
    return parts


def canonical_parts(event: Mapping[str, Any]) -> tuple[str, ...]:
    """The canonical text of `event`'s producer-supplied fields, split at the open links."""
    return _split_canonical(_with_open_links(event))


def render(event: Mapping[str, Any], topic: str, partition: int, offset: int) -> PendingRecord:
    """Render a validated event (see `events.parse_event`) for `link`."""
    record = _with_open_links(event)
    row_parts = tuple(copy_line(record, topic, partition, offset).split(_OPEN))
    if len(row_parts) != _ROW_PARTS:
        raise EventRejected("NUL character in the event", event["tenant_id"],
                            event["audit_id"], kind="nul")
    return PendingRecord(event["tenant_id"], event["audit_id"], event["timestamp"],
                         _split_canonical(record), row_parts)


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
