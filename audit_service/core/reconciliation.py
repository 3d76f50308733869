"""Completeness (SPEC section 9): account for every message of a partition in the store.

Pure: the caller streams one partition's messages from the broker and its records and
rejects from one database snapshot, each in offset order; `PartitionReconciler` merge-joins
the three streams, so memory stays flat whatever the size of the log. Each message below
the stored offset must be, in this order of preference:

- rejected: the rejects row at its (partition, offset) holds the same raw key and value;
- chained: the record at its (partition, offset) has the same producer content, compared
  exactly as the daemon tells a redelivery from a conflict (`linking.canonical_parts` of
  the validated event and of the stored record);
- redelivered: nothing is stored at its coordinates, but its audit_id is chained for its
  tenant with the same content (looked up in bounded batches, not one query per message).

Anything else is a `Finding`, as is a record or reject whose coordinates no message
accounts for (an orphan). Offsets the broker no longer holds (retention) are reported,
not judged; messages at or beyond the stored offset are pending.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple, Protocol

from audit_service.core.chain import EVENT_FIELDS, GENESIS_AUDIT_ID
from audit_service.core.events import EventRejected, ValidationLimits, parse_event
from audit_service.core.linking import canonical_parts
from audit_service.core.offset_policy import LogRange
from audit_service.core.stored import StoredRecord, StoredReject

FINDING_MISSING: Final = "missing"
"""A message nothing in the store accounts for."""
FINDING_ALTERED: Final = "altered"
"""The record or reject stored at a message's coordinates holds other content."""
FINDING_ORPHAN_RECORD: Final = "orphan_record"
"""A record whose coordinates no message accounts for."""
FINDING_ORPHAN_REJECT: Final = "orphan_reject"
"""A rejects row whose coordinates no message accounts for."""
FINDING_EXPIRED: Final = "expired"
"""Offsets the broker dropped before the daemon stored them: lost before they were chained."""
FINDING_TRUNCATED: Final = "truncated"
"""The broker's log ends below the stored offset: stored history it cannot back up."""
FINDING_KINDS: Final = (FINDING_MISSING, FINDING_ALTERED, FINDING_ORPHAN_RECORD,
                        FINDING_ORPHAN_REJECT, FINDING_EXPIRED, FINDING_TRUNCATED)

REDELIVERY_LOOKUP_BATCH: Final = 1000
"""Messages with nothing at their coordinates, looked up by (tenant, audit_id) at once."""
_VALUE_CHARS: Final = 60
"""How much of a differing value a finding quotes."""


class SourceMessage(Protocol):
    """A message as the broker holds it (the consumer's ConsumedMessage)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


RedeliveryLookup = Callable[[Sequence[tuple[str, str]]], Mapping[tuple[str, str], StoredRecord]]
"""Chained records for (tenant_id, audit_id) pairs; pairs not chained are absent."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the store cannot account for, with where it is and what differs."""

    kind: str
    partition: int | None
    offset: int | None
    detail: str
    tenant_id: str | None = None
    audit_id: str | None = None
    sequence_number: int | None = None
    """Of the record involved, when there is one."""

    def describe(self) -> str:
        where = "-" if self.partition is None else f"partition {self.partition}"
        if self.offset is not None:
            where += f" offset {self.offset}"
        who = [f"tenant {self.tenant_id!r}" if self.tenant_id else "",
               f"audit_id {self.audit_id}" if self.audit_id else "",
               f"sequence {self.sequence_number}" if self.sequence_number is not None else ""]
        subject = ", ".join(part for part in who if part)
        return f"{self.kind}: {where}{f' ({subject})' if subject else ''}: {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PartitionPlan:
    """What to scan of one partition: the broker's log against the offset the store holds.

    The scanned range is [log.begin, scan_end): below log.begin the broker no longer has the
    messages (retention), from the stored offset on they are pending.
    """

    partition: int
    log: LogRange
    stored_offset: int
    """Next offset to consume as stored in PostgreSQL (0 when never consumed)."""

    @property
    def scan_end(self) -> int:
        return max(self.log.begin, min(self.stored_offset, self.log.end))

    @property
    def pending(self) -> int:
        return max(0, self.log.end - max(self.stored_offset, self.log.begin))

    def boundary_findings(self) -> list[Finding]:
        """Offsets lost before they were stored, and stored history the broker lacks."""
        findings = []
        if self.stored_offset < self.log.begin:
            findings.append(Finding(
                FINDING_EXPIRED, self.partition, self.stored_offset,
                f"offsets {self.stored_offset}..{self.log.begin - 1} left the broker "
                "(retention) before they were stored"))
        if self.stored_offset > self.log.end:
            findings.append(Finding(
                FINDING_TRUNCATED, self.partition, self.log.end,
                f"the broker's log ends at {self.log.end}, below the stored offset "
                f"{self.stored_offset}: offsets {self.log.end}..{self.stored_offset - 1} "
                "cannot be checked (log lost or topic recreated?)"))
        return findings


@dataclass(slots=True)
class PartitionTally:
    """Counts for one partition's summary."""

    partition: int
    log_begin: int
    log_end: int
    stored_offset: int
    scanned: int = 0
    chained: int = 0
    rejected: int = 0
    redelivered: int = 0
    pending: int = 0
    findings: int = 0

    @property
    def retention_note(self) -> str | None:
        """Retention is reported, never a finding."""
        if self.log_begin == 0:
            return None
        return f"retention: offsets 0..{self.log_begin - 1} no longer on the broker"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "retention_note": self.retention_note}


class _Parsed(NamedTuple):
    """A message validated as the daemon validates it: its canonical parts, or a reason."""

    tenant_id: str | None
    audit_id: str | None
    event: dict[str, Any] | None
    parts: tuple[str, ...] | None
    reason: str | None


class _Candidate(NamedTuple):
    """A valid message with nothing stored at its coordinates: a redelivery, or missing."""

    offset: int
    parsed: _Parsed


_NONE: Final[list[Any]] = []
"""No rows (never modified)."""


class _Rows:
    """A peekable stream of rows (records or rejects) in offset order."""

    def __init__(self, rows: Iterable[Any]):
        self._rows = iter(rows)
        self.head: Any = next(self._rows, None)

    def pop(self) -> Any:
        row, self.head = self.head, next(self._rows, None)
        return row

    def below(self, offset: int) -> list[Any]:
        rows = []
        while self.head is not None and self.head.offset < offset:
            rows.append(self.pop())
        return rows

    def at(self, offset: int) -> list[Any]:
        if self.head is None or self.head.offset != offset:
            return _NONE  # the common case for rejects, cheap on the per-message path
        rows = []
        while self.head is not None and self.head.offset == offset:
            rows.append(self.pop())
        return rows

    def rest(self) -> Iterator[Any]:
        while self.head is not None:
            yield self.pop()


def _quote(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS] + "..."


def content_difference(event: Mapping[str, Any], stored: Mapping[str, Any]) -> str:
    """Which producer fields differ between a validated message and a stored record."""
    differing = [
        f"{field}: message {_quote(event[field])}, stored {_quote(stored.get(field))}"
        for field in EVENT_FIELDS
        if json.dumps(event[field], sort_keys=True) != json.dumps(stored.get(field),
                                                                     sort_keys=True)
    ]
    return "; ".join(differing) or "same fields, different canonical text"


def bytes_difference(message: SourceMessage, reject: StoredReject) -> str:
    """How a rejects row's raw bytes differ from the message's."""
    parts = []
    for name, sent, kept in (("key", message.key, reject.raw_key),
                             ("value", message.value, reject.raw_value)):
        if sent == kept:
            continue
        if sent is None or kept is None:
            parts.append(f"{name}: message {'none' if sent is None else f'{len(sent)} bytes'}, "
                         f"stored {'none' if kept is None else f'{len(kept)} bytes'}")
            continue
        first = next((i for i, (a, b) in enumerate(zip(sent, kept, strict=False)) if a != b),
                     min(len(sent), len(kept)))
        parts.append(f"{name}: message {len(sent)} bytes, stored {len(kept)} bytes, "
                     f"first difference at byte {first}")
    return "; ".join(parts)


def _same_bytes(message: SourceMessage, rejects: list[StoredReject]) -> StoredReject | None:
    """The rejects row holding exactly the message's raw key and value, if any."""
    for reject in rejects:
        if reject.raw_value == message.value and reject.raw_key == message.key:
            return reject
    return None


def _same_content(parsed: _Parsed, records: list[StoredRecord]) -> StoredRecord | None:
    """The record with the message's producer content, compared as the daemon compares a
    redelivery with what is chained (`linking.canonical_parts`), if any."""
    if parsed.parts is not None:
        for record in records:
            if canonical_parts(record.fields) == parsed.parts:
                return record
    return None


def unplaced_record(record: StoredRecord) -> Finding | None:
    """A record stored without coordinates is an orphan, unless it is a genesis record
    (which no message produced)."""
    if record.sequence_number == 0 and record.audit_id == GENESIS_AUDIT_ID:
        return None
    return Finding(FINDING_ORPHAN_RECORD, None, None, "stored without Kafka coordinates",
                   record.tenant_id, record.audit_id, record.sequence_number)


class PartitionReconciler:
    """Merge-joins one partition's messages with its stored records and rejects.

    `run` yields findings as it goes and keeps the counts in `tally`. Records and rejects
    must start at `plan.log.begin` (below it the broker holds nothing to compare with) and
    be complete beyond the stored offset, where any row is an orphan: the daemon stores a
    row and the offset past it in one transaction.
    """

    def __init__(self, plan: PartitionPlan, lookup: RedeliveryLookup, limits: ValidationLimits,
                 now: datetime, lookup_batch: int = REDELIVERY_LOOKUP_BATCH):
        self.plan = plan
        self.tally = PartitionTally(plan.partition, plan.log.begin, plan.log.end,
                                    plan.stored_offset, pending=plan.pending)
        self._lookup = lookup
        self._limits = limits
        self._now = now
        self._lookup_batch = lookup_batch
        self._candidates: list[_Candidate] = []

    def run(self, messages: Iterable[SourceMessage], records: Iterable[StoredRecord],
            rejects: Iterable[StoredReject]) -> Iterator[Finding]:
        """Messages must lie in [plan.log.begin, plan.scan_end); every stream in offset order."""
        for finding in self.plan.boundary_findings():
            yield self._count(finding)
        stored_records, stored_rejects = _Rows(records), _Rows(rejects)
        for message in messages:
            offset = message.offset
            if stored_records.head is not None and stored_records.head.offset < offset:
                for record in stored_records.below(offset):
                    yield self._count(self._orphan_record(record))
            if stored_rejects.head is not None and stored_rejects.head.offset < offset:
                for reject in stored_rejects.below(offset):
                    yield self._count(self._orphan_reject(reject))
            self.tally.scanned += 1
            for finding in self._account(message, stored_records.at(offset),
                                         stored_rejects.at(offset)):
                yield self._count(finding)
            if len(self._candidates) >= self._lookup_batch:
                yield from self._resolve_candidates()
        yield from self._resolve_candidates()
        for record in stored_records.rest():
            if self._judged(record.offset):
                yield self._count(self._orphan_record(record))
        for reject in stored_rejects.rest():
            if self._judged(reject.offset):
                yield self._count(self._orphan_reject(reject))

    def _count(self, finding: Finding) -> Finding:
        self.tally.findings += 1
        return finding

    def _judged(self, offset: int) -> bool:
        """False for rows in a stretch the broker lost (the truncated finding covers it)."""
        return offset < self.plan.scan_end or offset >= self.plan.stored_offset

    def _parse(self, message: SourceMessage) -> _Parsed:
        try:
            event = parse_event(message.key, message.value, self._limits, self._now)
            return _Parsed(event["tenant_id"], event["audit_id"], event,
                           canonical_parts(event), None)
        except EventRejected as exc:
            return _Parsed(exc.tenant_id, exc.audit_id, None, None, exc.reason)

    def _account(self, message: SourceMessage, records: list[StoredRecord],
                 rejects: list[StoredReject]) -> list[Finding]:
        """Classify one message against the rows stored at its coordinates."""
        match = _same_bytes(message, rejects)
        if match is not None:
            self.tally.rejected += 1
            others: list[StoredRecord | StoredReject] = [
                *records, *(r for r in rejects if r is not match)]
            return [self._extra(row, f"rejects row #{match.id}") for row in others]
        parsed = self._parse(message)
        chained = _same_content(parsed, records)
        if chained is not None:
            self.tally.chained += 1
            if len(records) == 1 and not rejects:
                return _NONE
            extras: list[StoredRecord | StoredReject] = [
                *(r for r in records if r is not chained), *rejects]
            return [self._extra(row, f"record sequence {chained.sequence_number}")
                    for row in extras]
        if not records and not rejects:
            if parsed.parts is None:
                return [Finding(FINDING_MISSING, message.partition, message.offset,
                                f"not a valid event ({parsed.reason}) and no rejects row "
                                "holds it", parsed.tenant_id, parsed.audit_id)]
            self._candidates.append(_Candidate(message.offset, parsed))
            return []
        stored: list[StoredRecord | StoredReject] = [*records, *rejects]
        return [self._altered(message, parsed, stored[0]),
                *(self._extra(row, "the row above") for row in stored[1:])]

    def _altered(self, message: SourceMessage, parsed: _Parsed,
                 row: StoredRecord | StoredReject) -> Finding:
        if isinstance(row, StoredReject):
            return Finding(FINDING_ALTERED, message.partition, message.offset,
                           f"rejects row #{row.id} holds other bytes: "
                           f"{bytes_difference(message, row)}", row.tenant_id, row.audit_id)
        if parsed.event is None:
            detail = (f"the message is not a valid event ({parsed.reason}), yet a record is "
                      "stored at its coordinates")
        else:
            detail = f"stored record differs: {content_difference(parsed.event, row.fields)}"
        return Finding(FINDING_ALTERED, message.partition, message.offset, detail,
                       row.tenant_id, row.audit_id, row.sequence_number)

    def _extra(self, row: StoredRecord | StoredReject, accounted_by: str) -> Finding:
        """A second row at coordinates whose message another row already accounts for."""
        reason = f"its message is already accounted for by {accounted_by}"
        if isinstance(row, StoredReject):
            return self._orphan_reject(row, reason)
        return self._orphan_record(row, reason)

    def _no_message(self, offset: int) -> str:
        if offset >= self.plan.stored_offset:
            return (f"at or beyond the stored offset {self.plan.stored_offset}, where no "
                    "committed batch can have written it")
        return "no message at these coordinates on the broker"

    def _orphan_record(self, record: StoredRecord, reason: str | None = None) -> Finding:
        return Finding(FINDING_ORPHAN_RECORD, record.partition, record.offset,
                       reason or self._no_message(record.offset or 0), record.tenant_id,
                       record.audit_id, record.sequence_number)

    def _orphan_reject(self, reject: StoredReject, reason: str | None = None) -> Finding:
        return Finding(FINDING_ORPHAN_REJECT, reject.partition, reject.offset,
                       f"rejects row #{reject.id}: {reason or self._no_message(reject.offset)}",
                       reject.tenant_id, reject.audit_id)

    def _resolve_candidates(self) -> Iterator[Finding]:
        """Decide the buffered candidates with one lookup: redeliveries, or missing."""
        candidates, self._candidates = self._candidates, []
        if not candidates:
            return
        keys = list({(c.parsed.tenant_id, c.parsed.audit_id) for c in candidates})
        chained = self._lookup(keys)  # type: ignore[arg-type]
        partition = self.plan.partition
        for offset, parsed in candidates:
            record = chained.get((parsed.tenant_id, parsed.audit_id))  # type: ignore[arg-type]
            if record is not None and canonical_parts(record.fields) == parsed.parts:
                self.tally.redelivered += 1
                continue
            if record is None:
                detail = "valid event, neither stored at these coordinates nor chained"
                sequence = None
            else:
                assert parsed.event is not None
                where = ("" if record.partition is None
                         else f" at partition {record.partition} offset {record.offset}")
                difference = content_difference(parsed.event, record.fields)
                detail = (f"the audit_id is chained{where} with other content and no rejects "
                          f"row holds this message: {difference}")
                sequence = record.sequence_number
            yield self._count(Finding(FINDING_MISSING, partition, offset, detail,
                                      parsed.tenant_id, parsed.audit_id, sequence))
