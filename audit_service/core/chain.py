"""Pure chain logic: canonical JSON, the record hash, genesis, chaining and verification.

Nothing here does I/O, so the writer (the daemon) and every verifier (database, export,
an auditor's own script) share one definition of what a record and its hash are.

The hash (SPEC section 3): take the record's hashed fields as a dict, serialise with
`json.dumps(d, sort_keys=True, separators=(",", ":"))` (ASCII-escaped), encode UTF-8,
SHA-256, lowercase hex.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Final

TENANT_ID_PATTERN: Final = r"^[A-Za-z0-9._:-]{1,128}$"
"""A tenant id (SPEC section 2). Kept here, not with the pydantic schema, so that the
verifiers and `export`, which never validate events, start without loading pydantic."""

GENESIS_PREVIOUS_HASH: Final = "0" * 64
GENESIS_AUDIT_ID: Final = "00000000-0000-0000-0000-000000000000"
GENESIS_ACTOR_ID: Final = "audit-service"

HASHED_FIELDS: Final = (
    "audit_id", "tenant_id", "sequence_number", "previous_hash", "timestamp", "ingested_at",
    "event_type", "event_category", "severity", "actor_type", "actor_id",
    "actor_permissions", "investigation_id", "alert_id", "entity_ids", "context",
    "decision", "outcome", "source_service", "record_version",
)
"""Exactly the keys of the dict that is hashed; `record_hash` is stored beside them."""

EVENT_FIELDS: Final = tuple(
    f for f in HASHED_FIELDS if f not in {"sequence_number", "previous_hash", "ingested_at"}
)
"""The fields that come from the producer's event (with defaults filled in)."""

_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


class TimestampError(ValueError):
    """A timestamp that is not RFC 3339 with an explicit offset."""


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime, truncated to microseconds."""
    match = _RFC3339.fullmatch(text)
    if not match:
        raise TimestampError(f"not an RFC 3339 timestamp with a zone offset: {text[:64]!r}")
    date, clock, fraction, zone = match.groups()
    micros = (fraction or "")[:6].ljust(6, "0")
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        parsed = datetime.fromisoformat(f"{date}T{clock}.{micros}{zone}")
    except ValueError as exc:
        raise TimestampError(f"invalid timestamp {text[:64]!r}: {exc}") from None
    return parsed.astimezone(UTC)


def format_timestamp(moment: datetime) -> str:
    """Render as `YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC: the only form that is ever hashed."""
    if moment.tzinfo is None:
        raise TimestampError("naive datetimes are never hashed")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def stable_number(value: float) -> float | int:
    """One float in the form JSONB gives back (see `jsonb_stable`)."""
    if value == 0.0:
        return 0.0
    text = repr(value)
    if "e+" in text:
        return int(Decimal(text))
    return value


def jsonb_stable(value: Any) -> Any:
    """Return `value` in the form PostgreSQL JSONB gives back, so hashes survive a round trip.

    JSONB stores numbers as `numeric`: it has no negative zero (-0.0 comes back as 0.0) and
    prints large exponents in plain digits (1e+16 comes back as the integer
    10000000000000000, the exact decimal of the float's shortest repr). Small exponents
    (1e-07 -> 0.0000001) parse back to the same float.
    """
    if isinstance(value, float):
        return stable_number(value)
    if isinstance(value, dict):
        return {key: jsonb_stable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonb_stable(item) for item in value]
    return value


def _not_serialisable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def compact_json_encoder(*, sort_keys: bool) -> Callable[[Any], str]:
    """`json.dumps(value, sort_keys=..., separators=(",", ":"))` (ASCII-escaped), built once.

    `json.dumps` and `JSONEncoder.encode` construct a new C encoder on every call, which
    costs more than encoding a small object; on the hot path (every hash, every JSONB
    column) we keep one. Without the C accelerator it falls back to the stdlib path.
    """
    if c_make_encoder is None:
        return json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":")).encode
    chunks = c_make_encoder(
        None, _not_serialisable, encode_basestring_ascii, None, ":", ",", sort_keys, False,
        True,
    )
    return lambda value: "".join(chunks(value, 0))


_encode_canonical = compact_json_encoder(sort_keys=True)


def canonical_json(record: Mapping[str, Any]) -> str:
    """The exact text that is hashed, for the hashed fields of `record`."""
    return _encode_canonical({field: record[field] for field in HASHED_FIELDS})


def compute_record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (lowercase hex) of the canonical JSON of the record's hashed fields."""
    return hashlib.sha256(canonical_json(record).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last link of a tenant's chain: what the next record must point at."""

    tenant_id: str
    last_sequence: int
    last_hash: str

    @classmethod
    def empty(cls, tenant_id: str) -> ChainHead:
        """A tenant with no records yet; the next record is genesis."""
        return cls(tenant_id, -1, GENESIS_PREVIOUS_HASH)

    @property
    def is_empty(self) -> bool:
        return self.last_sequence < 0


def genesis_record(tenant_id: str, created_at: datetime) -> dict[str, Any]:
    """The first record of every tenant's chain (sequence 0), hashed."""
    moment = _format_batch_timestamp(created_at)
    record = _genesis_fields(tenant_id, moment)
    head, tail = _genesis_canonical_around_tenant(moment)
    canonical = f"{head}{encode_basestring_ascii(tenant_id)}{tail}"
    record["record_hash"] = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return record


@lru_cache(maxsize=4)
def _genesis_canonical_around_tenant(moment: str) -> tuple[str, str]:
    """The canonical JSON of a genesis record at `moment`, cut around its tenant_id value.

    A batch starts thousands of chains at one moment and genesis records differ only in
    their tenant: the text is encoded once per moment. The JSON string of any tenant_id
    goes between the two parts, as the canonical encoder itself writes it.
    """
    text = canonical_json(_genesis_fields("", moment))
    head, tail = text.split('"tenant_id":""', 1)
    return f'{head}"tenant_id":', tail


def _genesis_fields(tenant_id: str, moment: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "audit_id": GENESIS_AUDIT_ID,
        "tenant_id": tenant_id,
        "sequence_number": 0,
        "previous_hash": GENESIS_PREVIOUS_HASH,
        "timestamp": moment,
        "ingested_at": moment,
        "event_type": "system.genesis",
        "event_category": "system",
        "severity": "info",
        "actor_type": "system",
        "actor_id": GENESIS_ACTOR_ID,
        "actor_permissions": [],
        "investigation_id": "",
        "alert_id": "",
        "entity_ids": [],
        "context": {},
        "decision": {},
        "outcome": {},
        "source_service": GENESIS_ACTOR_ID,
        "record_version": "1.0",
    }
    return record


def chain_event(
    head: ChainHead, event: Mapping[str, Any], ingested_at: datetime
) -> dict[str, Any]:
    """Link a validated event (see `events.parse_event`) onto `head`; returns the hashed record.

    The caller advances the head with `advance(head, record)`; an empty head must first get
    its genesis record.
    """
    if head.is_empty:
        raise ValueError(f"tenant {head.tenant_id!r} has no genesis record yet")
    record = {field: event[field] for field in EVENT_FIELDS}
    record["sequence_number"] = head.last_sequence + 1
    record["previous_hash"] = head.last_hash
    record["ingested_at"] = _format_batch_timestamp(ingested_at)
    record["record_hash"] = compute_record_hash(record)
    return record


_format_batch_timestamp = lru_cache(maxsize=4)(format_timestamp)
"""A batch chains many events with one ingested_at: render it once."""


def advance(head: ChainHead, record: Mapping[str, Any]) -> ChainHead:
    """The head after `record` was appended."""
    return ChainHead(head.tenant_id, record["sequence_number"], record["record_hash"])


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first place a chain stops being provably intact, with its evidence."""

    tenant_id: str
    sequence_number: int | None
    kind: str
    expected: str
    found: str
    position: int
    """1-based index of the offending record in the input (a line number for an export)."""

    def describe(self) -> str:
        if self.kind == BREAK_HEAD:
            where = "head"
        elif self.sequence_number is not None:
            where = f"sequence {self.sequence_number}"
        else:
            where = "record without a sequence number"
        return (
            f"tenant {self.tenant_id!r} {where} (record #{self.position}): {self.kind}: "
            f"expected {self.expected}, found {self.found}"
        )


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """What a verification pass saw: how many records, and the first break if any."""

    tenant_id: str
    records_checked: int
    first_sequence: int | None
    last_sequence: int | None
    last_hash: str | None
    first_break: ChainBreak | None

    @property
    def valid(self) -> bool:
        return self.first_break is None


BREAK_HASH_MISMATCH: Final = "hash mismatch"
BREAK_LINK: Final = "broken link"
BREAK_GAP: Final = "sequence gap"
BREAK_GENESIS: Final = "bad genesis"
BREAK_HEAD: Final = "head mismatch"
BREAK_TENANT: Final = "tenant mismatch"
BREAK_MALFORMED: Final = "malformed record"


def _genesis_problem(record: Mapping[str, Any]) -> tuple[str, str] | None:
    expected = {
        "previous_hash": GENESIS_PREVIOUS_HASH,
        "audit_id": GENESIS_AUDIT_ID,
        "event_type": "system.genesis",
    }
    for field, value in expected.items():
        if record.get(field) != value:
            return f"{field}={value}", f"{field}={record.get(field)}"
    return None


def _record_problem(
    tenant_id: str, record: Mapping[str, Any], previous: Mapping[str, Any] | None,
    expected_sequence: int, expected_previous_hash: str | None,
) -> tuple[str, str, str] | None:
    """The (kind, expected, found) of the first problem with one record, or None."""
    missing = [field for field in (*HASHED_FIELDS, "record_hash") if field not in record]
    if missing:
        return BREAK_MALFORMED, "all hashed fields and record_hash", f"missing {missing}"
    if record["tenant_id"] != tenant_id:
        return BREAK_TENANT, tenant_id, str(record["tenant_id"])
    if record["sequence_number"] != expected_sequence:
        return BREAK_GAP, f"sequence {expected_sequence}", f"sequence {record['sequence_number']}"
    if expected_sequence == 0:
        problem = _genesis_problem(record)
        if problem:
            return BREAK_GENESIS, *problem
    link = previous["record_hash"] if previous is not None else expected_previous_hash
    if link is not None and record["previous_hash"] != link:
        return BREAK_LINK, f"previous_hash {link}", f"previous_hash {record['previous_hash']}"
    try:
        recomputed = compute_record_hash(record)
    except (TypeError, ValueError) as exc:
        return BREAK_MALFORMED, "JSON-serialisable hashed fields", str(exc)
    if recomputed != record["record_hash"]:
        stored = record["record_hash"]
        return BREAK_HASH_MISMATCH, f"record_hash {recomputed}", f"record_hash {stored}"
    return None


def verify_chain(
    tenant_id: str,
    records: Iterable[Mapping[str, Any]],
    *,
    start_sequence: int = 0,
    expected_previous_hash: str | None = None,
    expected_head: ChainHead | None = None,
) -> VerificationResult:
    """Stream over one tenant's records in sequence order and report the first break.

    Checks every record's hash, its link to its predecessor, a gap-free sequence starting
    at `start_sequence`, the genesis record when starting at 0, and, when `expected_head` is
    given, that the last record is the head the writer recorded (so a removed tail fails).
    Memory stays constant: only the previous record is kept.
    """
    previous: Mapping[str, Any] | None = None
    count = 0
    first_sequence: int | None = None
    for count, record in enumerate(records, start=1):
        problem = _record_problem(
            tenant_id, record, previous, start_sequence + count - 1, expected_previous_hash
        )
        if problem:
            kind, expected, found = problem
            sequence = record.get("sequence_number")
            return VerificationResult(
                tenant_id, count - 1, first_sequence,
                previous["sequence_number"] if previous else None,
                previous["record_hash"] if previous else None,
                ChainBreak(tenant_id, sequence if isinstance(sequence, int) else None,
                           kind, expected, found, count),
            )
        if first_sequence is None:
            first_sequence = record["sequence_number"]
        previous = record
    last_sequence = previous["sequence_number"] if previous else None
    last_hash = previous["record_hash"] if previous else None
    return VerificationResult(
        tenant_id, count, first_sequence, last_sequence, last_hash,
        head_break(tenant_id, expected_head, last_sequence, last_hash, count + 1),
    )


def head_break(
    tenant_id: str, expected_head: ChainHead | None, last_sequence: int | None,
    last_hash: str | None, position: int,
) -> ChainBreak | None:
    """The break when an intact chain ending at `last_sequence` is not `expected_head`
    (None: no head to check), reported at `position` (one past the last record)."""
    if expected_head is None or (
        expected_head.last_sequence == (last_sequence if last_sequence is not None else -1)
        and (last_hash is None or expected_head.last_hash == last_hash)
    ):
        return None
    return ChainBreak(
        tenant_id, None, BREAK_HEAD,
        f"last record {expected_head.last_sequence} with hash {expected_head.last_hash}",
        f"last record {last_sequence} with hash {last_hash}", position,
    )
