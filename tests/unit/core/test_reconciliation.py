"""How one partition's messages are accounted for against its stored rows (reconciliation;
pure code: the streams are lists here, the redelivery lookup a dict)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from audit_service.core.chain import genesis_record
from audit_service.core.events import ValidationLimits, parse_event
from audit_service.core.offset_policy import LogRange
from audit_service.core.reconciliation import (
    FINDING_ALTERED,
    FINDING_EXPIRED,
    FINDING_MISSING,
    FINDING_ORPHAN_RECORD,
    FINDING_ORPHAN_REJECT,
    FINDING_TRUNCATED,
    Finding,
    PartitionPlan,
    PartitionReconciler,
    StoredRecord,
    StoredReject,
    unplaced_record,
)

NOW = datetime.now(UTC)
LIMITS = ValidationLimits()
TENANT = "tenant-u"
PARTITION = 1


def wire_event(tenant_id: str, **fields: Any) -> dict[str, Any]:
    """A valid wire-format event with a fresh audit_id; `fields` override or add."""
    return {"audit_id": str(uuid.uuid4()), "tenant_id": tenant_id,
            "timestamp": "2026-11-26T15:00:00.123Z", "event_type": "alert.classified",
            "actor_type": "agent", "actor_id": "triage-agent", **fields}


class Message(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def _message(offset: int, event: dict[str, Any] | None = None, *,
             value: bytes | None = None) -> Message:
    if event is not None:
        value = json.dumps(event).encode()
    return Message(PARTITION, offset, TENANT.encode(), value)


def _record(message: Message, sequence: int, offset: int | None = None,
            **changes: Any) -> StoredRecord:
    """The record the daemon stores for `message` (optionally at other coordinates)."""
    fields = parse_event(message.key, message.value, LIMITS, NOW) | changes
    return StoredRecord(PARTITION, message.offset if offset is None else offset,
                        {**fields, "sequence_number": sequence})


def _reject(message: Message, row_id: int = 1, value: bytes | None = None) -> StoredReject:
    return StoredReject(row_id, PARTITION, message.offset, message.key,
                        message.value if value is None else value, TENANT, None)


class Lookup:
    """The redelivery lookup, counting its calls."""

    def __init__(self, records: Sequence[StoredRecord] = ()):
        self.records = {(r.tenant_id, r.audit_id): r for r in records}
        self.calls: list[int] = []

    def __call__(self, keys: Sequence[tuple[str, str]]) -> Mapping[tuple[str, str],
                                                                   StoredRecord]:
        self.calls.append(len(keys))
        return {key: self.records[key] for key in keys if key in self.records}


def _run(messages: list[Message], records: list[StoredRecord],
         rejects: list[StoredReject] = (), *, lookup: Lookup | None = None,
         log: LogRange | None = None, stored: int | None = None,
         lookup_batch: int = 1000) -> tuple[list[Finding], PartitionReconciler]:
    end = len(messages) if not messages else messages[-1].offset + 1
    plan = PartitionPlan(PARTITION, log or LogRange(0, end), end if stored is None else stored)
    reconciler = PartitionReconciler(plan, lookup or Lookup(), LIMITS, NOW, lookup_batch)
    findings = list(reconciler.run(messages, records, list(rejects)))
    return findings, reconciler


def _where(findings: list[Finding]) -> list[tuple[str, int | None, int | None]]:
    return [(f.kind, f.partition, f.offset) for f in findings]


def test_chained_and_rejected_messages_account_for_the_partition() -> None:
    messages = [_message(0, wire_event(TENANT)), _message(1, value=b"{not json"),
                _message(2, wire_event(TENANT))]

    findings, reconciler = _run(messages, [_record(messages[0], 1), _record(messages[2], 2)],
                                [_reject(messages[1])])

    assert findings == []
    tally = reconciler.tally
    assert (tally.scanned, tally.chained, tally.rejected, tally.findings) == (3, 2, 1, 0)


def test_the_same_content_in_another_form_is_still_the_same_record() -> None:
    event = wire_event(TENANT, timestamp="2026-11-26T16:19:16.123+00:00")
    sent = _message(0, value=json.dumps(event, indent=2).encode())
    stored = _record(_message(0, {**event, "timestamp": "2026-11-26T16:19:16.123000Z",
                                  "severity": "info", "record_version": "1.0"}), 1)

    assert _run([sent], [stored])[0] == []


def test_a_changed_field_is_named_with_both_values() -> None:
    message = _message(0, wire_event(TENANT, actor_id="triage-agent"))

    findings, _ = _run([message], [_record(message, 1, actor_id="mallory")])

    assert _where(findings) == [(FINDING_ALTERED, PARTITION, 0)]
    assert findings[0].sequence_number == 1
    assert findings[0].detail == (
        'stored record differs: actor_id: message "triage-agent", stored "mallory"')


def test_a_number_of_another_type_differs_as_the_daemon_would_see_it() -> None:
    message = _message(0, wire_event(TENANT, outcome={"duration_ms": 1}))

    findings, _ = _run([message], [_record(message, 1, outcome={"duration_ms": 1.0})])

    assert _where(findings) == [(FINDING_ALTERED, PARTITION, 0)]
    assert 'outcome: message {"duration_ms": 1}, stored {"duration_ms": 1.0}' in \
        findings[0].detail


def test_a_reject_with_other_bytes_is_altered() -> None:
    message = _message(0, value=b"{not json")

    findings, _ = _run([message], [], [_reject(message, 7, value=b"{not jsox")])

    assert _where(findings) == [(FINDING_ALTERED, PARTITION, 0)]
    assert findings[0].detail == ("rejects row #7 holds other bytes: value: message 9 bytes, "
                                  "stored 9 bytes, first difference at byte 8")


def test_redeliveries_are_looked_up_in_batches() -> None:
    events = [wire_event(TENANT) for _ in range(5)]
    first = [_message(offset, event) for offset, event in enumerate(events)]
    again = [_message(5 + offset, event) for offset, event in enumerate(events)]
    records = [_record(message, n + 1) for n, message in enumerate(first)]
    lookup = Lookup(records)

    findings, reconciler = _run(first + again, records, lookup=lookup, lookup_batch=2)

    assert findings == []
    assert (reconciler.tally.chained, reconciler.tally.redelivered) == (5, 5)
    assert lookup.calls == [2, 2, 1]


def test_a_valid_message_stored_nowhere_is_missing() -> None:
    kept, lost = wire_event(TENANT), wire_event(TENANT)
    messages = [_message(0, kept), _message(1, lost)]

    findings, _ = _run(messages, [_record(messages[0], 1)])

    assert _where(findings) == [(FINDING_MISSING, PARTITION, 1)]
    assert (findings[0].tenant_id, findings[0].audit_id) == (TENANT, lost["audit_id"])
    assert "neither stored at these coordinates nor chained" in findings[0].detail


def test_a_conflict_without_its_rejects_row_is_missing() -> None:
    event = wire_event(TENANT)
    messages = [_message(0, event), _message(1, {**event, "actor_id": "someone-else"})]
    records = [_record(messages[0], 1)]

    findings, _ = _run(messages, records, lookup=Lookup(records))

    assert _where(findings) == [(FINDING_MISSING, PARTITION, 1)]
    assert "chained at partition 1 offset 0 with other content" in findings[0].detail
    assert findings[0].sequence_number == 1


def test_bad_input_without_its_rejects_row_is_missing_with_the_reason() -> None:
    findings, _ = _run([_message(0, value=b'["an", "array"]')], [])

    assert _where(findings) == [(FINDING_MISSING, PARTITION, 0)]
    assert findings[0].detail == ("not a valid event (value is a JSON list, expected an "
                                  "object) and no rejects row holds it")


def test_rows_no_message_accounts_for_are_orphans() -> None:
    messages = [_message(0, wire_event(TENANT)), _message(2, wire_event(TENANT))]
    in_gap = _record(_message(1, wire_event(TENANT)), 2)
    beyond = _record(_message(9, wire_event(TENANT)), 3)
    second = _record(_message(2, wire_event(TENANT)), 4)
    records = [_record(messages[0], 1), in_gap, _record(messages[1], 5), second, beyond]

    findings, reconciler = _run(messages, records,
                                [_reject(_message(1, value=b"x")), _reject(_message(12))],
                                stored=3)

    assert _where(findings) == [
        (FINDING_ORPHAN_RECORD, PARTITION, 1), (FINDING_ORPHAN_REJECT, PARTITION, 1),
        (FINDING_ORPHAN_RECORD, PARTITION, 2), (FINDING_ORPHAN_RECORD, PARTITION, 9),
        (FINDING_ORPHAN_REJECT, PARTITION, 12)]
    assert [f.detail for f in findings] == [
        "no message at these coordinates on the broker",
        "rejects row #1: no message at these coordinates on the broker",
        "its message is already accounted for by record sequence 5",
        "at or beyond the stored offset 3, where no committed batch can have written it",
        "rejects row #1: at or beyond the stored offset 3, where no committed batch can have "
        "written it"]
    assert reconciler.tally.findings == 5


def test_retention_is_a_note_and_pending_messages_are_counted_not_read() -> None:
    plan = PartitionPlan(PARTITION, LogRange(100, 180), stored_offset=150)

    assert (plan.scan_end, plan.pending, plan.boundary_findings()) == (150, 30, [])
    tally = PartitionReconciler(plan, Lookup(), LIMITS, NOW).tally
    assert tally.retention_note == "retention: offsets 0..99 no longer on the broker"
    assert tally.pending == 30


def test_offsets_expired_before_they_were_stored_are_a_finding() -> None:
    plan = PartitionPlan(PARTITION, LogRange(100, 180), stored_offset=40)

    assert (plan.scan_end, plan.pending) == (100, 80)
    assert [(f.kind, f.offset, f.detail) for f in plan.boundary_findings()] == [
        (FINDING_EXPIRED, 40, "offsets 40..99 left the broker (retention) before they were "
                              "stored")]


def test_a_log_that_ends_below_the_stored_offset_is_a_finding_and_its_rows_are_not_judged(
) -> None:
    messages = [_message(0, wire_event(TENANT)), _message(1, wire_event(TENANT))]
    lost_from_broker = _record(_message(3, wire_event(TENANT)), 3)

    findings, _ = _run(messages, [_record(messages[0], 1), _record(messages[1], 2),
                                  lost_from_broker], log=LogRange(0, 2), stored=5)

    assert _where(findings) == [(FINDING_TRUNCATED, PARTITION, 2)]
    assert "offsets 2..4 cannot be checked" in findings[0].detail


def test_only_a_genesis_record_may_lack_coordinates() -> None:
    genesis = genesis_record(TENANT, NOW)
    assert unplaced_record(StoredRecord(None, None, genesis)) is None

    forged = {**genesis, "audit_id": "99999999-9999-4999-8999-999999999999"}
    finding = unplaced_record(StoredRecord(None, None, forged))
    assert finding is not None and finding.kind == FINDING_ORPHAN_RECORD
    assert finding.describe() == (
        "orphan_record: - (tenant 'tenant-u', audit_id 99999999-9999-4999-8999-999999999999, "
        "sequence 0): stored without Kafka coordinates")


def test_a_finding_line_names_partition_offset_tenant_and_audit_id() -> None:
    finding = Finding(FINDING_MISSING, 2, 17, "what differs", TENANT, "a-1")

    assert finding.describe() == ("missing: partition 2 offset 17 (tenant 'tenant-u', "
                                  "audit_id a-1): what differs")
    assert finding.as_json()["offset"] == 17
