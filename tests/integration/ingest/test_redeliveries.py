"""Redeliveries under new offsets: a batch is chained first without looking its audit_ids
up, and only a batch the unique key refuses is redone with the lookup, so duplicates
stay no-ops and conflicts stay quarantined while the common batch skips the lookup."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from support import records_of, statements_run, wire_event

from audit_service.core.chain import verify_chain
from audit_service.core.events import ValidationLimits
from audit_service.core.messages import ConsumedMessage
from audit_service.core.outcomes import REJECTED_CONFLICT
from audit_service.ingest.batch import commit_batch
from audit_service.storage.reader import AuditReader

GROUP = "audit-test-redeliveries"
LIMITS = ValidationLimits()
LOOKUP = "JOIN audit_records AS r USING (tenant_id, audit_id)"
ATTEMPT = "INSERT INTO audit_consumer_offsets"


def _messages(events: list[dict[str, Any]], first_offset: int) -> list[ConsumedMessage]:
    return [ConsumedMessage("audit.events", 0, first_offset + n, e["tenant_id"].encode(),
                            json.dumps(e).encode()) for n, e in enumerate(events)]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def _audit_ids(engine: Engine, tenant: str) -> list[str]:
    return [r["audit_id"] for r in records_of(AuditReader(engine), tenant)[1:]]


def test_a_batch_of_new_audit_ids_is_chained_in_one_attempt_without_the_lookup(
    engine: Engine,
) -> None:
    events = [wire_event(f"tenant-{n % 3}") for n in range(30)]
    with statements_run(engine) as seen:
        outcome = commit_batch(engine, _messages(events, 0), GROUP, LIMITS)

    assert (outcome.chained, outcome.duplicates, outcome.rejected) == (30, 0, 0)
    assert sum(ATTEMPT in s for s in seen) == 1
    assert not any(LOOKUP in s for s in seen)
    for tenant in ("tenant-0", "tenant-1", "tenant-2"):
        assert verify_chain(tenant, records_of(AuditReader(engine), tenant)).valid


def test_a_stored_audit_id_redelivered_at_a_new_offset_is_a_duplicate_or_a_conflict(
    engine: Engine,
) -> None:
    first = [wire_event("tenant-r") for _ in range(10)]
    commit_batch(engine, _messages(first, 0), GROUP, LIMITS)
    redelivered = dict(first[3])
    conflicting = dict(first[5], actor_id="someone-else")
    fresh = [wire_event("tenant-r") for _ in range(5)]
    second = [fresh[0], redelivered, fresh[1], conflicting, *fresh[2:]]

    with statements_run(engine) as seen:
        outcome = commit_batch(engine, _messages(second, 10), GROUP, LIMITS)

    assert (outcome.chained, outcome.duplicates, outcome.rejected) == (5, 1, 1)
    assert outcome.rejected_by_kind[REJECTED_CONFLICT] == 1
    assert outcome.next_offsets == {0: 17}
    # Refused by the unique key on the first attempt, then redone with the lookup (with
    # the records copied together, not each inserted in a savepoint as for a refused row).
    assert sum(ATTEMPT in s for s in seen) == 2
    assert sum(LOOKUP in s for s in seen) == 1
    assert not any(s.startswith("SAVEPOINT") for s in seen)
    chain = records_of(AuditReader(engine), "tenant-r")
    assert verify_chain("tenant-r", chain).valid
    assert _audit_ids(engine, "tenant-r") == [e["audit_id"] for e in first + fresh]
    assert chain[6]["actor_id"] == first[5]["actor_id"]
    with engine.connect() as connection:
        reasons = connection.execute(text(
            "SELECT reason, audit_id::text, \"offset\" FROM audit_rejected_events")).all()
    assert len(reasons) == 1
    reason, audit_id, offset = reasons[0]
    assert (audit_id, offset) == (first[5]["audit_id"], 13)
    assert "already chained" in reason and "different content" in reason


def test_an_audit_id_twice_in_one_batch_is_one_record_without_a_second_attempt(
    engine: Engine,
) -> None:
    events = [wire_event("tenant-d") for _ in range(4)]
    with statements_run(engine) as seen:
        outcome = commit_batch(engine, _messages([*events, events[1]], 0), GROUP, LIMITS)

    assert (outcome.chained, outcome.duplicates, outcome.rejected) == (4, 1, 0)
    assert sum(ATTEMPT in s for s in seen) == 1
    assert _audit_ids(engine, "tenant-d") == [e["audit_id"] for e in events]
