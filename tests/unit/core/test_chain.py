"""The pure chain functions: timestamps, JSONB-stable values, the hash, genesis, verification.

The hash definition (SPEC section 3) is checked against text built by hand in the test, not
against the implementation's own output, so a change to the definition cannot go unnoticed.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from audit_service.core.chain import (
    BREAK_GAP,
    BREAK_GENESIS,
    BREAK_HASH_MISMATCH,
    BREAK_HEAD,
    BREAK_LINK,
    BREAK_MALFORMED,
    BREAK_TENANT,
    GENESIS_AUDIT_ID,
    GENESIS_PREVIOUS_HASH,
    HASHED_FIELDS,
    ChainHead,
    TimestampError,
    VerificationResult,
    advance,
    canonical_json,
    chain_event,
    compute_record_hash,
    format_timestamp,
    genesis_record,
    jsonb_stable,
    parse_timestamp,
    verify_chain,
)

TENANT = "tenant-acme"
CREATED = datetime(2026, 11, 26, 16, 0, 0, 250000, tzinfo=UTC)


def make_event(n: int, tenant_id: str = TENANT) -> dict[str, Any]:
    """A validated event (the shape `events.parse_event` returns) numbered `n`."""
    return {
        "audit_id": f"00000000-0000-4000-8000-{n:012d}",
        "tenant_id": tenant_id,
        "timestamp": format_timestamp(CREATED + timedelta(seconds=n)),
        "event_type": "alert.classified",
        "event_category": "decision",
        "severity": "info",
        "actor_type": "agent",
        "actor_id": f"agent-{n}",
        "actor_permissions": ["alerts:read"],
        "investigation_id": f"inv-{n}",
        "alert_id": f"alert-{n}",
        "entity_ids": [f"host-{n}"],
        "context": {"llm_input_tokens": n, "llm_cost_usd": 0.5 * n},
        "decision": {"confidence": 0.75},
        "outcome": {},
        "source_service": "orchestrator",
        "record_version": "1.0",
    }


def build_chain(length: int, tenant_id: str = TENANT) -> list[dict[str, Any]]:
    """Genesis plus `length - 1` chained events, as the writer would produce them."""
    records = [genesis_record(tenant_id, CREATED)]
    head = advance(ChainHead.empty(tenant_id), records[0])
    for n in range(1, length):
        ingested = CREATED + timedelta(seconds=n, milliseconds=5)
        record = chain_event(head, make_event(n, tenant_id), ingested)
        records.append(record)
        head = advance(head, record)
    return records


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    """What a forger would do: recompute the record's own hash after editing it."""
    record["record_hash"] = compute_record_hash(record)
    return record


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T16:19:16.123Z", datetime(2026, 11, 26, 16, 19, 16, 123000, tzinfo=UTC)),
        ("2026-11-26T16:19:16.123+00:00", datetime(2026, 11, 26, 16, 19, 16, 123000, tzinfo=UTC)),
        ("2026-11-26T16:19:16Z", datetime(2026, 11, 26, 16, 19, 16, tzinfo=UTC)),
        # +05:30 is 5h30m ahead of UTC: the UTC instant is earlier.
        ("2026-11-26T21:49:16.5+05:30", datetime(2026, 11, 26, 16, 19, 16, 500000, tzinfo=UTC)),
        ("2026-11-26T10:19:16-06:00", datetime(2026, 11, 26, 16, 19, 16, tzinfo=UTC)),
        # An offset can move the instant to another day.
        ("2026-01-01T02:00:00+05:30", datetime(2025, 12, 31, 20, 30, tzinfo=UTC)),
        # Nanoseconds are truncated (not rounded) to microseconds.
        ("2026-11-26T16:19:16.123456789Z", datetime(2026, 11, 26, 16, 19, 16, 123456, tzinfo=UTC)),
        ("2026-11-26T16:19:16.999999999Z", datetime(2026, 11, 26, 16, 19, 16, 999999, tzinfo=UTC)),
        ("2026-11-26t16:19:16.123z", datetime(2026, 11, 26, 16, 19, 16, 123000, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_normalises_to_utc_microseconds(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T16:19:16.123",  # no zone: ambiguous instant
        "2026-11-26T16:19:16",
        "2026-11-26",  # date only
        "2026-02-30T00:00:00Z",  # no such day
        "2026-13-01T00:00:00Z",  # no such month
        "2026-11-26T25:00:00Z",  # no such hour
        "2026-11-26T24:00:00Z",
        "2026-11-26T16:61:00Z",
        "2026-11-26T16:19:16+24:00",  # offset out of range
        "2026-11-26T16:19:16+0530",  # offset without colon is not RFC 3339
        "2026-11-26T16:19:16.Z",  # empty fraction
        "26-11-26T16:19:16Z",
        "1732638000",
        "",
        "\uff12\uff10\uff12\uff16-11-26T16:19:16Z",  # fullwidth digits
    ],
)
def test_parse_timestamp_rejects_non_rfc3339(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_timestamp(text)


def test_parse_timestamp_rejects_trailing_newline() -> None:
    with pytest.raises(TimestampError):
        parse_timestamp("2026-11-26T16:19:16.123Z\n")


def test_timestamp_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="zone"):
        parse_timestamp("2026-11-26T16:19:16")


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 11, 26, 16, 19, 16, 123000, tzinfo=UTC), "2026-11-26T16:19:16.123000Z"),
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05.000000Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC), "2026-01-02T03:04:05.000007Z"),
        (
            datetime(2026, 1, 2, 8, 34, 5, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            "2026-01-02T03:04:05.000001Z",
        ),
    ],
)
def test_format_timestamp_renders_utc_with_six_fraction_digits(
    moment: datetime, expected: str
) -> None:
    assert format_timestamp(moment) == expected


def test_format_timestamp_refuses_naive_datetimes() -> None:
    with pytest.raises(TimestampError):
        format_timestamp(datetime(2026, 1, 2, 3, 4, 5))


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("2026-11-26T16:19:16.123Z", "2026-11-26T16:19:16.123000Z"),
        ("2026-11-26T16:19:16+00:00", "2026-11-26T16:19:16.000000Z"),
        ("2026-11-26T21:49:16.000001+05:30", "2026-11-26T16:19:16.000001Z"),
        ("2026-11-26T16:19:16.1234567Z", "2026-11-26T16:19:16.123456Z"),
    ],
)
def test_parse_then_format_gives_the_hashed_form(text: str, rendered: str) -> None:
    assert format_timestamp(parse_timestamp(text)) == rendered
    # The hashed form is itself a fixed point.
    assert format_timestamp(parse_timestamp(rendered)) == rendered


# --------------------------------------------------------------------------- jsonb_stable


def test_jsonb_stable_turns_negative_zero_into_zero() -> None:
    result = jsonb_stable(-0.0)
    assert result == 0.0
    assert isinstance(result, float)
    assert json.dumps(result) == "0.0"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e16, 10000000000000000),
        (-1e16, -10000000000000000),
        (1.5e16, 15000000000000000),
        (1e300, 10**300),
        (1.2345678901234568e17, 123456789012345680),
    ],
)
def test_jsonb_stable_turns_large_exponent_floats_into_exact_ints(
    value: float, expected: int
) -> None:
    result = jsonb_stable(value)
    assert type(result) is int
    assert result == expected


@pytest.mark.parametrize("value", [1e-07, 1.5e-05, 0.1, 1.0, 1e15, 0.0125, -2.5, 5e-324])
def test_jsonb_stable_keeps_ordinary_floats(value: float) -> None:
    result = jsonb_stable(value)
    assert type(result) is float
    assert result == value
    assert repr(result) == repr(value)


@pytest.mark.parametrize(
    "value", [True, False, None, "1e+16", "-0.0", "", 0, -7, 10**30, -(10**40), 2**63]
)
def test_jsonb_stable_leaves_non_floats_unchanged(value: Any) -> None:
    result = jsonb_stable(value)
    assert result == value
    assert type(result) is type(value)


def test_jsonb_stable_recurses_into_lists_and_dicts() -> None:
    value = {
        "a": [-0.0, 1e16, {"b": 1e300, "c": [1e-07, True, "x"]}],
        "d": {"e": {"f": -0.0}},
        "g": 10**20,
    }
    result = jsonb_stable(value)
    assert result == {
        "a": [0.0, 10000000000000000, {"b": 10**300, "c": [1e-07, True, "x"]}],
        "d": {"e": {"f": 0.0}},
        "g": 10**20,
    }
    assert type(result["a"][1]) is int
    assert type(result["a"][2]["b"]) is int
    assert result["a"][2]["c"][1] is True
    assert json.dumps(result["d"]) == '{"e": {"f": 0.0}}'
    # The input is not modified.
    assert value["a"][1] == 1e16
    assert type(value["a"][1]) is float


# --------------------------------------------------------------------------- the hash

KNOWN_RECORD: dict[str, Any] = {
    "audit_id": "6f1c2d3e-4b5a-4978-8a6b-1c2d3e4f5a6b",
    "tenant_id": "tenant-acme",
    "sequence_number": 7,
    "previous_hash": "ab" * 32,
    "timestamp": "2026-11-26T16:19:16.123000Z",
    "ingested_at": "2026-11-26T16:19:17.000001Z",
    "event_type": "alert.classified",
    "event_category": "decision",
    "severity": "warning",
    "actor_type": "agent",
    "actor_id": "triage-agent",
    "actor_permissions": ["alerts:write", "alerts:read"],
    "investigation_id": "inv-42",
    "alert_id": "",
    "entity_ids": ["user-2", "host-1"],
    "context": {"llm_provider": "anthropic", "llm_input_tokens": 1200, "llm_cost_usd": 0.0125},
    "decision": {
        "recommended_actions": ["isolate"],
        "confidence": 0.92,
        "reasoning_summary": "Caf\u00e9 \u2713",
        "classification": "true_positive",
    },
    "outcome": {"outcome_status": "success", "analyst_feedback_correct": None},
    "source_service": "orchestrator",
    "record_version": "1.0",
    "record_hash": "not part of the hash",
}

# Built by hand from SPEC section 3: keys sorted at every level, no spaces, non-ASCII
# escaped, list order preserved, None as null, record_hash absent.
KNOWN_CANONICAL = (
    '{"actor_id":"triage-agent",'
    '"actor_permissions":["alerts:write","alerts:read"],'
    '"actor_type":"agent",'
    '"alert_id":"",'
    '"audit_id":"6f1c2d3e-4b5a-4978-8a6b-1c2d3e4f5a6b",'
    '"context":{"llm_cost_usd":0.0125,"llm_input_tokens":1200,"llm_provider":"anthropic"},'
    '"decision":{"classification":"true_positive","confidence":0.92,'
    '"reasoning_summary":"Caf\\u00e9 \\u2713","recommended_actions":["isolate"]},'
    '"entity_ids":["user-2","host-1"],'
    '"event_category":"decision",'
    '"event_type":"alert.classified",'
    '"ingested_at":"2026-11-26T16:19:17.000001Z",'
    '"investigation_id":"inv-42",'
    '"outcome":{"analyst_feedback_correct":null,"outcome_status":"success"},'
    '"previous_hash":"abababababababababababababababababababababababababababababababab",'
    '"record_version":"1.0",'
    '"sequence_number":7,'
    '"severity":"warning",'
    '"source_service":"orchestrator",'
    '"tenant_id":"tenant-acme",'
    '"timestamp":"2026-11-26T16:19:16.123000Z"}'
)


def test_canonical_json_of_a_known_record_matches_the_spec_text() -> None:
    assert canonical_json(KNOWN_RECORD) == KNOWN_CANONICAL


def test_record_hash_of_a_known_record_matches_an_independent_computation() -> None:
    expected = hashlib.sha256(KNOWN_CANONICAL.encode("utf-8")).hexdigest()
    digest = compute_record_hash(KNOWN_RECORD)
    assert digest == expected
    assert len(digest) == 64
    assert digest == digest.lower()


def test_hash_ignores_record_hash_and_fields_outside_the_definition() -> None:
    without = {k: v for k, v in KNOWN_RECORD.items() if k != "record_hash"}
    with_metadata = {**KNOWN_RECORD, "kafka_topic": "audit.events", "kafka_offset": 99}
    assert compute_record_hash(without) == compute_record_hash(KNOWN_RECORD)
    assert compute_record_hash(with_metadata) == compute_record_hash(KNOWN_RECORD)


def test_hashed_fields_are_exactly_the_spec_fields() -> None:
    assert set(HASHED_FIELDS) == {
        "audit_id", "tenant_id", "sequence_number", "previous_hash", "timestamp",
        "ingested_at", "event_type", "event_category", "severity", "actor_type", "actor_id",
        "actor_permissions", "investigation_id", "alert_id", "entity_ids", "context",
        "decision", "outcome", "source_service", "record_version",
    }
    assert len(HASHED_FIELDS) == len(set(HASHED_FIELDS))
    assert "record_hash" not in HASHED_FIELDS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("actor_id", "triage-agent "),
        ("sequence_number", 8),
        ("alert_id", None),  # an empty string and a null are different evidence
        ("entity_ids", ["host-1", "user-2"]),  # list order matters
        ("context", {"llm_provider": "anthropic", "llm_input_tokens": 1200.0,
                     "llm_cost_usd": 0.0125}),  # 1200 and 1200.0 are different
        ("timestamp", "2026-11-26T16:19:16.123001Z"),
    ],
)
def test_any_change_to_a_hashed_value_changes_the_hash(field: str, value: Any) -> None:
    changed = {**KNOWN_RECORD, field: value}
    assert compute_record_hash(changed) != compute_record_hash(KNOWN_RECORD)


def test_hash_of_astral_plane_text_uses_ascii_escapes() -> None:
    record = {**KNOWN_RECORD, "actor_id": "bot \U0001f600", "context": {"note": "\u00fc\U0001f600"}}
    text = canonical_json(record)
    assert text.isascii()
    assert '"actor_id":"bot \\ud83d\\ude00"' in text
    assert '"context":{"note":"\\u00fc\\ud83d\\ude00"}' in text
    assert "\U0001f600" not in text
    assert compute_record_hash(record) == hashlib.sha256(text.encode("ascii")).hexdigest()


def test_canonical_json_requires_every_hashed_field() -> None:
    incomplete = {k: v for k, v in KNOWN_RECORD.items() if k != "severity"}
    with pytest.raises(KeyError):
        canonical_json(incomplete)


# --------------------------------------------------------------------------- genesis / chaining


def test_genesis_record_fields() -> None:
    record = genesis_record(TENANT, CREATED)
    assert record["sequence_number"] == 0
    assert record["previous_hash"] == "0" * 64
    assert record["previous_hash"] == GENESIS_PREVIOUS_HASH
    assert record["audit_id"] == "00000000-0000-0000-0000-000000000000" == GENESIS_AUDIT_ID
    assert record["tenant_id"] == TENANT
    assert record["event_type"] == "system.genesis"
    assert record["event_category"] == "system"
    assert record["severity"] == "info"
    assert record["actor_type"] == "system"
    assert record["actor_id"] == "audit-service"
    assert record["timestamp"] == record["ingested_at"] == "2026-11-26T16:00:00.250000Z"
    assert record["actor_permissions"] == []
    assert record["entity_ids"] == []
    assert record["investigation_id"] == ""
    assert record["alert_id"] == ""
    assert record["context"] == record["decision"] == record["outcome"] == {}
    assert record["record_version"] == "1.0"
    assert set(record) == {*HASHED_FIELDS, "record_hash"}
    assert record["record_hash"] == hashlib.sha256(
        canonical_json(record).encode("utf-8")
    ).hexdigest()


def test_genesis_timestamp_is_rendered_in_utc() -> None:
    created = datetime(2026, 11, 26, 21, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    record = genesis_record(TENANT, created)
    assert record["timestamp"] == "2026-11-26T16:00:00.000000Z"
    assert record["ingested_at"] == record["timestamp"]


@pytest.mark.parametrize("tenant", [
    "tenant-a", "", 'quote"d', "back\\slash", "t\u00e9nant-\u2603", "tab\there", "\U0001f512",
    "tenant_id", '"tenant_id":""',
])
def test_genesis_hash_is_the_hash_of_its_canonical_json_for_any_tenant(tenant: str) -> None:
    # Genesis texts are encoded once per moment and cut around the tenant: checked here
    # against json.dumps of the whole record, for tenants that need escaping, and across
    # more moments than the per-moment cache holds.
    for step in (0, 1, 0, 2, 3, 4, 5, 0):
        record = genesis_record(tenant, CREATED + timedelta(microseconds=step))
        hashed = {field: record[field] for field in HASHED_FIELDS}
        expected = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
        assert record["tenant_id"] == tenant
        assert record["record_hash"] == hashlib.sha256(expected.encode()).hexdigest()


def test_genesis_hash_differs_per_tenant() -> None:
    a = genesis_record("tenant-a", CREATED)
    b = genesis_record("tenant-b", CREATED)
    assert a["record_hash"] != b["record_hash"]


def test_chain_head_empty() -> None:
    head = ChainHead.empty(TENANT)
    assert head.is_empty
    assert head.last_sequence == -1
    assert head.last_hash == GENESIS_PREVIOUS_HASH
    assert head.tenant_id == TENANT


def test_chain_event_refuses_an_empty_head() -> None:
    with pytest.raises(ValueError, match="genesis"):
        chain_event(ChainHead.empty(TENANT), make_event(1), CREATED)


def test_chaining_increments_the_sequence_and_links_previous_hash() -> None:
    genesis = genesis_record(TENANT, CREATED)
    head = advance(ChainHead.empty(TENANT), genesis)
    assert head == ChainHead(TENANT, 0, genesis["record_hash"])
    assert not head.is_empty

    ingested = datetime(2026, 11, 26, 16, 0, 1, 5, tzinfo=UTC)
    first = chain_event(head, make_event(1), ingested)
    assert first["sequence_number"] == 1
    assert first["previous_hash"] == genesis["record_hash"]
    assert first["ingested_at"] == "2026-11-26T16:00:01.000005Z"
    assert first["record_hash"] == hashlib.sha256(
        canonical_json(first).encode("utf-8")
    ).hexdigest()
    for field, value in make_event(1).items():
        assert first[field] == value
    assert set(first) == {*HASHED_FIELDS, "record_hash"}

    head = advance(head, first)
    assert head == ChainHead(TENANT, 1, first["record_hash"])
    second = chain_event(head, make_event(2), ingested)
    assert second["sequence_number"] == 2
    assert second["previous_hash"] == first["record_hash"]
    assert second["record_hash"] != first["record_hash"]


def test_chain_event_drops_fields_outside_the_event() -> None:
    head = advance(ChainHead.empty(TENANT), genesis_record(TENANT, CREATED))
    event = {**make_event(1), "kafka_offset": 12, "sequence_number": 99, "previous_hash": "x"}
    record = chain_event(head, event, CREATED)
    assert "kafka_offset" not in record
    assert record["sequence_number"] == 1
    assert record["previous_hash"] == head.last_hash


def test_same_event_on_a_different_head_hashes_differently() -> None:
    chain = build_chain(3)
    head_1 = ChainHead(TENANT, 1, chain[1]["record_hash"])
    head_2 = ChainHead(TENANT, 2, chain[2]["record_hash"])
    a = chain_event(head_1, make_event(9), CREATED)
    b = chain_event(head_2, make_event(9), CREATED)
    assert a["record_hash"] != b["record_hash"]


# --------------------------------------------------------------------------- verification


def test_verify_chain_accepts_a_valid_chain() -> None:
    chain = build_chain(6)
    result = verify_chain(TENANT, chain)
    assert result.valid
    assert result.first_break is None
    assert result == VerificationResult(
        TENANT, 6, 0, 5, chain[-1]["record_hash"], None
    )


def test_verify_chain_survives_a_json_export_round_trip() -> None:
    chain = build_chain(4)
    exported = [json.loads(json.dumps(record)) for record in chain]
    assert verify_chain(TENANT, exported).valid


def test_verify_chain_streams_from_a_generator() -> None:
    chain = build_chain(5)
    result = verify_chain(TENANT, (record for record in chain))
    assert result.valid
    assert result.records_checked == 5


def test_verify_chain_of_no_records_is_valid_and_empty() -> None:
    result = verify_chain(TENANT, [])
    assert result.valid
    assert result.records_checked == 0
    assert result.first_sequence is None
    assert result.last_sequence is None
    assert result.last_hash is None


def test_verify_detects_a_modified_field() -> None:
    chain = build_chain(6)
    chain[3]["actor_id"] = "someone-else"
    result = verify_chain(TENANT, chain)
    assert not result.valid
    brk = result.first_break
    assert brk is not None
    assert brk.kind == BREAK_HASH_MISMATCH
    assert brk.tenant_id == TENANT
    assert brk.sequence_number == 3
    assert brk.position == 4
    assert chain[3]["record_hash"] in brk.found
    assert compute_record_hash(chain[3]) in brk.expected
    # What was verified before the break is reported.
    assert result.records_checked == 3
    assert result.last_sequence == 2
    assert result.last_hash == chain[2]["record_hash"]


def test_verify_detects_a_modified_nested_value() -> None:
    chain = build_chain(4)
    chain[2]["context"]["llm_input_tokens"] = 999
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert (brk.kind, brk.sequence_number, brk.position) == (BREAK_HASH_MISMATCH, 2, 3)


def test_verify_detects_a_broken_link_after_a_rehashed_forgery() -> None:
    chain = build_chain(6)
    chain[2]["actor_id"] = "forged"
    rehash(chain[2])  # record 2 is self-consistent now, so record 3's link is what breaks
    result = verify_chain(TENANT, chain)
    brk = result.first_break
    assert brk is not None
    assert brk.kind == BREAK_LINK
    assert brk.sequence_number == 3
    assert brk.position == 4
    assert chain[2]["record_hash"] in brk.expected
    assert chain[3]["previous_hash"] in brk.found
    assert result.records_checked == 3


def test_verify_detects_a_relinked_record() -> None:
    chain = build_chain(5)
    chain[4]["previous_hash"] = "f" * 64
    rehash(chain[4])
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert (brk.kind, brk.sequence_number, brk.position) == (BREAK_LINK, 4, 5)


def test_verify_detects_a_deleted_middle_record_as_a_gap() -> None:
    chain = build_chain(6)
    del chain[2]
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert brk.kind == BREAK_GAP
    assert brk.sequence_number == 3
    assert brk.position == 3
    assert brk.expected == "sequence 2"
    assert brk.found == "sequence 3"


def test_verify_detects_swapped_records() -> None:
    chain = build_chain(6)
    chain[2], chain[3] = chain[3], chain[2]
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert brk.kind == BREAK_GAP
    assert brk.sequence_number == 3
    assert brk.position == 3


def test_verify_detects_swapped_records_with_renumbered_sequences() -> None:
    chain = build_chain(6)
    chain[2], chain[3] = chain[3], chain[2]
    chain[2]["sequence_number"], chain[3]["sequence_number"] = 2, 3
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert brk.kind in {BREAK_LINK, BREAK_HASH_MISMATCH}
    assert brk.sequence_number == 2
    assert brk.position == 3


def test_verify_detects_a_duplicated_record() -> None:
    chain = build_chain(4)
    chain.insert(2, dict(chain[1]))
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert (brk.kind, brk.sequence_number, brk.position) == (BREAK_GAP, 1, 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("previous_hash", "1" * 64),
        ("audit_id", "11111111-1111-1111-1111-111111111111"),
        ("event_type", "alert.classified"),
    ],
)
def test_verify_detects_a_bad_genesis(field: str, value: str) -> None:
    chain = build_chain(3)
    chain[0][field] = value
    rehash(chain[0])
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert brk.kind == BREAK_GENESIS
    assert brk.sequence_number == 0
    assert brk.position == 1
    assert field in brk.expected
    assert value in brk.found


def test_verify_detects_a_missing_genesis() -> None:
    chain = build_chain(4)[1:]
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert (brk.kind, brk.sequence_number, brk.position) == (BREAK_GAP, 1, 1)


def test_verify_detects_a_chain_of_another_tenant() -> None:
    chain = build_chain(3, tenant_id="tenant-other")
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert brk.kind == BREAK_TENANT
    assert brk.tenant_id == TENANT
    assert brk.sequence_number == 0
    assert brk.position == 1
    assert brk.expected == TENANT
    assert brk.found == "tenant-other"


def test_verify_detects_a_foreign_record_in_the_middle() -> None:
    chain = build_chain(5)
    foreign = build_chain(5, tenant_id="tenant-other")
    chain[3] = foreign[3]
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert (brk.kind, brk.sequence_number, brk.position) == (BREAK_TENANT, 3, 4)


def test_verify_detects_a_record_with_a_missing_field() -> None:
    chain = build_chain(5)
    del chain[2]["actor_id"]
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert brk.kind == BREAK_MALFORMED
    assert brk.sequence_number == 2
    assert brk.position == 3
    assert "actor_id" in brk.found


def test_verify_detects_a_record_without_its_hash() -> None:
    chain = build_chain(3)
    del chain[1]["record_hash"]
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert (brk.kind, brk.sequence_number, brk.position) == (BREAK_MALFORMED, 1, 2)
    assert "record_hash" in brk.found


def test_verify_reports_no_sequence_for_a_record_without_one() -> None:
    chain = build_chain(3)
    del chain[1]["sequence_number"]
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert brk.kind == BREAK_MALFORMED
    assert brk.sequence_number is None
    assert brk.position == 2
    assert "record #2" in brk.describe()
    assert "sequence_number" in brk.describe()


def test_describe_of_a_record_without_sequence_does_not_say_head() -> None:
    chain = build_chain(3)
    del chain[1]["sequence_number"]
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert " head " not in brk.describe()


def test_verify_reports_an_unserialisable_record_as_malformed() -> None:
    chain = build_chain(3)
    chain[2]["context"] = {"x": {1, 2}}
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert (brk.kind, brk.sequence_number, brk.position) == (BREAK_MALFORMED, 2, 3)


def test_verify_with_the_right_expected_head_is_valid() -> None:
    chain = build_chain(5)
    head = ChainHead(TENANT, 4, chain[-1]["record_hash"])
    result = verify_chain(TENANT, chain, expected_head=head)
    assert result.valid
    assert result.records_checked == 5


def test_verify_detects_a_removed_tail_with_the_expected_head() -> None:
    chain = build_chain(6)
    head = ChainHead(TENANT, 5, chain[-1]["record_hash"])
    truncated = chain[:-2]
    # Without the head the truncated chain looks fine: that is why the head is needed.
    assert verify_chain(TENANT, truncated).valid
    result = verify_chain(TENANT, truncated, expected_head=head)
    assert not result.valid
    brk = result.first_break
    assert brk is not None
    assert brk.kind == BREAK_HEAD
    assert brk.tenant_id == TENANT
    assert brk.sequence_number is None
    assert brk.position == len(truncated) + 1
    assert "5" in brk.expected
    assert chain[-1]["record_hash"] in brk.expected
    assert "3" in brk.found
    assert result.records_checked == 4
    assert result.last_sequence == 3
    assert "head" in brk.describe()


def test_verify_detects_a_head_with_a_different_hash() -> None:
    chain = build_chain(4)
    head = ChainHead(TENANT, 3, "e" * 64)
    brk = verify_chain(TENANT, chain, expected_head=head).first_break
    assert brk is not None
    assert brk.kind == BREAK_HEAD
    assert brk.position == 5


def test_verify_detects_all_records_removed_with_the_expected_head() -> None:
    head = ChainHead(TENANT, 3, "e" * 64)
    brk = verify_chain(TENANT, [], expected_head=head).first_break
    assert brk is not None
    assert brk.kind == BREAK_HEAD
    assert brk.position == 1


def test_verify_no_records_against_an_empty_head_is_valid() -> None:
    assert verify_chain(TENANT, [], expected_head=ChainHead.empty(TENANT)).valid


def test_verify_from_a_later_start_sequence() -> None:
    chain = build_chain(7)
    tail = chain[3:]
    result = verify_chain(
        TENANT, tail, start_sequence=3, expected_previous_hash=chain[2]["record_hash"],
        expected_head=ChainHead(TENANT, 6, chain[-1]["record_hash"]),
    )
    assert result.valid
    assert result.records_checked == 4
    assert result.first_sequence == 3
    assert result.last_sequence == 6


def test_verify_from_a_later_start_checks_the_anchor_hash() -> None:
    chain = build_chain(7)
    result = verify_chain(
        TENANT, chain[3:], start_sequence=3, expected_previous_hash="d" * 64
    )
    brk = result.first_break
    assert brk is not None
    assert (brk.kind, brk.sequence_number, brk.position) == (BREAK_LINK, 3, 1)


def test_verify_from_a_later_start_checks_the_start_sequence() -> None:
    chain = build_chain(7)
    brk = verify_chain(
        TENANT, chain[4:], start_sequence=3, expected_previous_hash=chain[2]["record_hash"]
    ).first_break
    assert brk is not None
    assert (brk.kind, brk.sequence_number, brk.position) == (BREAK_GAP, 4, 1)


def test_verify_reports_only_the_first_break() -> None:
    chain = build_chain(6)
    chain[4]["actor_id"] = "late"
    chain[1]["actor_id"] = "early"
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    assert brk.sequence_number == 1


def test_break_describe_names_tenant_sequence_and_position() -> None:
    chain = build_chain(4)
    chain[2]["severity"] = "critical"
    brk = verify_chain(TENANT, chain).first_break
    assert brk is not None
    text = brk.describe()
    assert repr(TENANT) in text
    assert "sequence 2" in text
    assert "#3" in text
    assert BREAK_HASH_MISMATCH in text
