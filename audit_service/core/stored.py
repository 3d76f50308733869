"""The stored rows reconcile compares with the topic, as `storage.reader` hands them over.

Apart from `core.reconciliation` so that the reader, which every auditing command loads,
does not load the event validation (and pydantic) the reconciler needs.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class StoredRecord(NamedTuple):
    """A chained record with its stored coordinates (None for a genesis record)."""

    partition: int | None
    offset: int | None
    fields: dict[str, Any]
    """The producer's fields (`chain.EVENT_FIELDS`) exactly as they were hashed, and the
    sequence_number."""

    @property
    def tenant_id(self) -> str:
        return str(self.fields["tenant_id"])

    @property
    def audit_id(self) -> str:
        return str(self.fields["audit_id"])

    @property
    def sequence_number(self) -> int:
        return int(self.fields["sequence_number"])


class StoredReject(NamedTuple):
    """A rejects row with its coordinates and the raw bytes it quarantined."""

    id: int
    partition: int
    offset: int
    raw_key: bytes | None
    raw_value: bytes | None
    tenant_id: str | None
    audit_id: str | None
