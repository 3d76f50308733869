"""The hostile input catalogue (issue 5): each message is quarantined with a clear reason
and its exact bytes, and the service is unharmed: the valid events around them are
chained and every chain verifies.

One pipeline run serves the whole catalogue (a consumer-group join costs seconds): every
hostile message is followed by a valid event on the same partition, so a message that
stalled the partition or crashed the daemon would leave valid events unchained. The
limits are the defaults (1 MiB per value), so the 5 MB value also proves that a message
larger than the service's fetch size is fetched and quarantined, not stuck.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import create_engine
from support import (
    chain_of,
    database_url_for,
    encode,
    new_topic,
    produce,
    rejections,
    run_until_idle,
    service_settings,
    temporary_database,
    wire_event,
)

from audit_service.auditing.verification import verify_database
from audit_service.config import Settings
from audit_service.storage.models import AuditRejectedEvent
from audit_service.storage.reader import AuditReader

TENANT = "tenant-hostile"
KEY = TENANT.encode()
FIVE_MB = 5 * 1024 * 1024
NESTING_LEVELS = 10_000
ORIGINAL = wire_event(TENANT, audit_id="6f1c2a9e-0d4b-4c1a-9e55-3b2f7d8a0c11")
"""Chained first; a later message reuses its audit_id with different content."""


@dataclass(frozen=True)
class Hostile:
    name: str
    key: bytes | None
    value: bytes | None
    reason: str
    """A fragment the stored reason must contain: what an operator reads."""


def _event(**fields: Any) -> bytes:
    return json.dumps(wire_event(TENANT, **fields)).encode()


def _valid_text() -> str:
    return json.dumps(wire_event(TENANT))


CATALOGUE = [
    Hostile("invalid-utf8", KEY, b'{"audit_id": "\xff\xfe\xfd"}', "not valid UTF-8"),
    Hostile("invalid-utf8-key", b"tenant-\xff", _event(), "message key is not valid UTF-8"),
    Hostile("truncated-json", KEY, _valid_text()[:60].encode(), "not valid JSON"),
    Hostile("empty-value", KEY, b"", "not valid JSON"),
    Hostile("json-array", KEY, json.dumps([wire_event(TENANT)]).encode(),
            "a JSON list, expected an object"),
    Hostile("json-string", KEY, b'"an audit event"', "a JSON str, expected an object"),
    Hostile("json-number", KEY, b"42", "a JSON int, expected an object"),
    Hostile("json-null", KEY, b"null", "expected an object"),
    Hostile("nested-10000-levels", KEY,
            (b'{"a":' * NESTING_LEVELS) + b"1" + (b"}" * NESTING_LEVELS), "nested deeper than"),
    Hostile("nested-10000-levels-in-context", KEY,
            _valid_text()[:-1].encode() + b', "context": {"x": ' + b"[" * NESTING_LEVELS
            + b"]" * NESTING_LEVELS + b"}}", "nested deeper than"),
    Hostile("value-5mb", KEY, _event(context={"blob": "x" * FIVE_MB}),
            "above the limit of 1048576"),
    Hostile("nul-in-actor-id", KEY, _event(actor_id="agent\u0000x"), "NUL character"),
    Hostile("nul-in-nested-value", KEY, _event(context={"note": "a\u0000b"}), "NUL character"),
    Hostile("nul-in-nested-key", KEY, _event(outcome={"k\u0000": 1}), "NUL character"),
    Hostile("nul-in-list", KEY, _event(entity_ids=["host-1", "\u0000"]), "NUL character"),
    Hostile("raw-nul-byte", KEY, _event(actor_id="agent-x").replace(b"agent-x", b"agent\x00x"),
            "not valid JSON"),
    Hostile("lone-surrogate", KEY, _event(actor_id="\ud800"), "unpaired UTF-16 surrogate"),
    Hostile("nan", KEY, _event(context={"llm_cost_usd": float("nan")}), "NaN"),
    Hostile("infinity", KEY, _event(decision={"confidence": float("inf")}), "Infinity"),
    Hostile("negative-infinity", KEY, _event(outcome={"cost_incurred_usd": float("-inf")}),
            "-Infinity"),
    Hostile("duplicate-json-key", KEY,
            _valid_text()[:-1].encode() + b', "actor_id": "someone-else"}', "duplicate JSON key"),
    Hostile("unknown-top-level-field", KEY, _event(actor_idd="typo"),
            "actor_idd: Extra inputs are not permitted"),
    Hostile("unknown-field-named-500k", KEY, _event(**{"k" * 500_000: 1}),
            "Extra inputs are not permitted"),
    Hostile("unknown-field-with-newline", KEY, _event(**{"x\nlevel=ERROR forged": 1}),
            "'x\\nlevel=ERROR forged': Extra inputs are not permitted"),
    Hostile("context-int-as-string", KEY, _event(context={"llm_input_tokens": "12"}),
            "context.llm_input_tokens"),
    Hostile("context-bool-as-string", KEY, _event(context={"llm_extended_thinking_used": "yes"}),
            "context.llm_extended_thinking_used"),
    Hostile("decision-confidence-out-of-range", KEY, _event(decision={"confidence": 1.5}),
            "decision.confidence"),
    Hostile("decision-list-as-string", KEY, _event(decision={"recommended_actions": "isolate"}),
            "decision.recommended_actions"),
    Hostile("outcome-rating-out-of-range", KEY, _event(outcome={"analyst_feedback_rating": 6}),
            "outcome.analyst_feedback_rating"),
    Hostile("context-not-an-object", KEY, _event(context=["a"]), "context"),
    Hostile("audit-id-not-a-uuid", KEY, _event(audit_id="1; DROP TABLE audit_records"),
            "audit_id"),
    Hostile("tenant-sql-metacharacters", b"t'; DROP TABLE audit_records;--",
            json.dumps(wire_event("t'; DROP TABLE audit_records;--")).encode(),
            "tenant_id: String should match pattern"),
    Hostile("tenant-path-separators", b"../../etc/passwd",
            json.dumps(wire_event("../../etc/passwd")).encode(),
            "tenant_id: String should match pattern"),
    Hostile("tenant-backslash", b"..\\..\\x", json.dumps(wire_event("..\\..\\x")).encode(),
            "tenant_id: String should match pattern"),
    Hostile("tenant-10000-chars", b"t" * 10_000, json.dumps(wire_event("t" * 10_000)).encode(),
            "tenant_id: String should match pattern"),
    Hostile("tenant-empty", b"", json.dumps(wire_event("")).encode(),
            "tenant_id: String should match pattern"),
    Hostile("key-tenant-mismatch", b"tenant-other", _event(), "does not match tenant_id"),
    Hostile("key-100kb", b"k" * 100_000, _event(), "does not match tenant_id"),
    Hostile("reserved-genesis", KEY, _event(event_type="system.genesis"), "is reserved"),
    Hostile("unknown-event-type", KEY, _event(event_type="alert.deleted"), "unknown event_type"),
    Hostile("duplicate-audit-id-different-content", KEY,
            json.dumps({**ORIGINAL, "actor_id": "someone-else"}).encode(),
            "already chained for tenant 'tenant-hostile' with different content"),
    Hostile("timestamp-far-past", KEY, _event(timestamp="1970-01-01T00:00:00Z"),
            "outside the accepted window"),
    Hostile("timestamp-year-1", KEY, _event(timestamp="0001-01-01T00:00:00Z"),
            "outside the accepted window"),
    Hostile("timestamp-far-future", KEY, _event(timestamp="2999-12-31T23:59:59.999Z"),
            "outside the accepted window"),
    Hostile("timestamp-with-500k-digit-fraction", KEY,
            _event(timestamp="1970-01-01T00:00:00." + "1" * 500_000 + "Z"),
            "outside the accepted window"),
    Hostile("timestamp-without-zone", KEY, _event(timestamp="2026-11-26T16:19:16.123"),
            "with a zone offset"),
    Hostile("timestamp-impossible-date", KEY, _event(timestamp="2026-02-30T10:00:00Z"),
            "invalid timestamp"),
    Hostile("timestamp-not-a-string", KEY, _event(timestamp=1_700_000_000), "timestamp"),
    Hostile("tombstone", KEY, None, "no value"),
]


@dataclass(frozen=True)
class HostileRun:
    settings: Settings
    chained: int
    rejected: dict[str, AuditRejectedEvent]
    valid_ids: list[str]


@pytest.fixture(scope="module")
def hostile_run(pg_admin_url: str, template_database: str,
                kafka_bootstrap: str) -> Iterator[HostileRun]:
    """Produce the catalogue, each message followed by a valid event, and run the daemon
    once with default limits until it is idle."""
    valid = [ORIGINAL] + [wire_event(TENANT) for _ in CATALOGUE]
    messages: list[tuple[bytes | None, bytes | None]] = [encode(ORIGINAL)]
    for hostile, event in zip(CATALOGUE, valid[1:], strict=True):
        messages += [(hostile.key, hostile.value), encode(event)]
    with temporary_database(pg_admin_url, "audit_hostile", template_database) as database:
        topic = new_topic(kafka_bootstrap, "audit.events.hostile")
        settings = service_settings(
            database_url_for(pg_admin_url, database), kafka_bootstrap, topic, batch_size=500
        )
        produce(kafka_bootstrap, topic, messages, partition=0)
        totals = run_until_idle(settings)
        rows = rejections(settings.database_url)
        assert len(rows) == len(CATALOGUE), [row.reason for row in rows]
        yield HostileRun(
            settings, totals.chained,
            {hostile.name: row for hostile, row in zip(CATALOGUE, rows, strict=True)},
            [event["audit_id"] for event in valid],
        )


@pytest.mark.parametrize("hostile", CATALOGUE, ids=[hostile.name for hostile in CATALOGUE])
def test_hostile_message_is_quarantined_byte_for_byte_with_a_clear_reason(
    hostile_run: HostileRun, hostile: Hostile
) -> None:
    row = hostile_run.rejected[hostile.name]
    assert hostile.reason in row.reason, row.reason
    assert len(row.reason) < 1000, "a reason is one readable line, not an echo of the input"
    assert "\n" not in row.reason
    assert (row.raw_key, row.raw_value) == (hostile.key, hostile.value)
    assert (row.topic, row.partition) == (hostile_run.settings.kafka_topic, 0)


def test_valid_events_around_the_hostile_ones_are_chained_and_every_chain_verifies(
    hostile_run: HostileRun,
) -> None:
    chain = chain_of(hostile_run.settings.database_url, TENANT)
    assert [record["audit_id"] for record in chain[1:]] == hostile_run.valid_ids
    assert hostile_run.chained == len(hostile_run.valid_ids)
    engine = create_engine(hostile_run.settings.database_url)
    try:
        reader = AuditReader(engine)
        assert list(reader.heads()) == [TENANT], "no hostile tenant got a chain"
        results = list(verify_database(reader))
    finally:
        engine.dispose()
    assert [(result.tenant_id, result.valid) for result in results] == [(TENANT, True)]
    assert results[0].records_checked == len(hostile_run.valid_ids) + 1
