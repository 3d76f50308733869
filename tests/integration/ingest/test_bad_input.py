"""Every kind of bad input is quarantined with its raw bytes and a reason; nothing is lost."""

from __future__ import annotations

import json
import secrets

import pytest
from support import (
    chain_of,
    encode,
    produce,
    rejections,
    run_until_idle,
    scalar,
    wire_event,
)

from audit_service.config import Settings
from audit_service.core.chain import verify_chain

TENANT = "tenant-bad"


def _bad_messages() -> tuple[list[tuple[str, bytes | None, bytes | None]], dict]:
    """(reason fragment, key, value) per kind of bad input in SPEC section 2, and the event
    whose audit_id the last one reuses with different content."""
    duplicate_of = wire_event(TENANT, audit_id="11111111-2222-4333-8444-555555555555")
    key = TENANT.encode()
    return [
        ("not valid UTF-8", key, b'{"audit_id": "\xff\xfe"}'),
        ("not valid JSON", key, b'{"audit_id": '),
        ("expected an object", key, b'["an", "array"]'),
        ("expected an object", key, b'"a string"'),
        ("schema violation: actor_type", key,
         json.dumps(wire_event(TENANT, actor_type="robot")).encode()),
        ("schema violation: surprise", key,
         json.dumps(wire_event(TENANT, surprise=True)).encode()),
        ("NaN", key, json.dumps(wire_event(TENANT, context={"llm_cost_usd": float("nan")}))
         .encode()),
        ("Infinity", key, json.dumps(wire_event(TENANT, decision={"confidence": float("inf")}))
         .encode()),
        ("NUL character", key, json.dumps(wire_event(TENANT, actor_id="evil\u0000")).encode()),
        ("does not match tenant_id", b"tenant-other", json.dumps(wire_event(TENANT)).encode()),
        ("above the limit", key,
         json.dumps(wire_event(TENANT, context={"blob": "x" * 5000})).encode()),
        ("reserved", key, json.dumps(wire_event(TENANT, event_type="system.genesis")).encode()),
        ("no value", key, None),
        ("already chained", key,
         json.dumps({**duplicate_of, "actor_id": "someone-else"}).encode()),
    ], duplicate_of


def test_each_kind_of_bad_input_is_quarantined_while_valid_events_are_chained(
    settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    bad, duplicate_of = _bad_messages()
    valid = [duplicate_of] + [wire_event(TENANT) for _ in range(len(bad))]
    messages: list[tuple[bytes | None, bytes | None]] = [encode(valid[0])]
    for event, (_, key, value) in zip(valid[1:], bad, strict=True):
        messages.append((key, value))
        messages.append(encode(event))
    produce(kafka_bootstrap, topic, messages, partition=0)
    small_limit = settings.model_copy(update={"max_event_bytes": 4096})

    totals = run_until_idle(small_limit)

    chain = chain_of(settings.database_url, TENANT)
    assert [r["audit_id"] for r in chain[1:]] == [e["audit_id"] for e in valid]
    stored = rejections(settings.database_url)
    assert totals.rejected == len(bad) == len(stored)
    for (fragment, key, value), row in zip(bad, stored, strict=True):
        assert fragment in row.reason, (fragment, row.reason)
        assert (row.raw_key, row.raw_value) == (key, value)
        assert (row.topic, row.partition) == (topic, 0)
    offsets = [row.offset for row in stored]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


@pytest.mark.parametrize("field", ["actor_id", "alert_id"])
def test_a_row_postgresql_refuses_is_isolated_not_the_whole_batch(
    settings: Settings, kafka_bootstrap: str, topic: str, field: str
) -> None:
    # Random text too long for a btree index entry: only PostgreSQL can tell.
    huge = secrets.token_hex(6000)
    events = [wire_event(TENANT) for _ in range(5)]
    events.insert(2, wire_event(TENANT, **{field: huge}))
    produce(kafka_bootstrap, topic, [encode(e) for e in events], partition=1)

    totals = run_until_idle(settings)

    chain = chain_of(settings.database_url, TENANT)
    assert [r["audit_id"] for r in chain[1:]] == [e["audit_id"] for i, e in enumerate(events)
                                                   if i != 2]
    [refused] = rejections(settings.database_url)
    assert "PostgreSQL refused" in refused.reason and "index row" in refused.reason
    assert refused.audit_id == events[2]["audit_id"]
    assert (totals.chained, totals.rejected) == (5, 1)


def test_a_new_tenant_whose_first_event_is_refused_keeps_its_genesis_head(
    settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    # The genesis is stored in the same transaction as the refused event, so the tenant's
    # head must say so; a head left empty would make every later genesis a duplicate key.
    tenant = "tenant-first-refused"
    refused = wire_event(tenant, actor_id=secrets.token_hex(6000))
    produce(kafka_bootstrap, topic, [encode(refused)], partition=2)
    first = run_until_idle(settings)
    assert (first.chained, first.rejected) == (0, 1)
    assert scalar(settings.database_url,
                  "SELECT last_sequence FROM audit_chain_state WHERE tenant_id = :t", t=tenant) == 0

    later = [wire_event(tenant) for _ in range(3)]
    produce(kafka_bootstrap, topic, [encode(e) for e in later], partition=2)
    second = run_until_idle(settings)

    assert (second.chained, second.rejected) == (3, 0)
    chain = chain_of(settings.database_url, tenant)
    assert [r["sequence_number"] for r in chain] == [0, 1, 2, 3]
    assert [r["audit_id"] for r in chain[1:]] == [e["audit_id"] for e in later]
    assert verify_chain(tenant, chain).valid
    assert scalar(settings.database_url,
                  "SELECT last_sequence FROM audit_chain_state WHERE tenant_id = :t", t=tenant) == 3
