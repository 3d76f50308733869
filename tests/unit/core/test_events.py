"""parse_event: raw Kafka key/value bytes -> a validated event, or EventRejected with a reason.

SPEC section 2: anything that is not a valid event is rejected with a human-readable reason
(the caller quarantines it); nothing is coerced, because the stored record is evidence.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from audit_service.core.chain import (
    EVENT_FIELDS,
    ChainHead,
    advance,
    chain_event,
    compute_record_hash,
    genesis_record,
    verify_chain,
)
from audit_service.core.events import REJECTION_KINDS, EventRejected, ValidationLimits, parse_event
from audit_service.core.taxonomy import EVENT_CATEGORIES, RESERVED_EVENT_TYPES

NOW = datetime(2026, 11, 26, 16, 19, 16, 123456, tzinfo=UTC)
LIMITS = ValidationLimits()
TENANT = "tenant-acme"
KEY = TENANT.encode()
AUDIT_ID = "0e1f2a3b-4c5d-6e7f-8091-a2b3c4d5e6f7"


def minimal(**changes: Any) -> dict[str, Any]:
    """The smallest valid event, with `changes` applied (a value of ... deletes the field)."""
    event: dict[str, Any] = {
        "audit_id": AUDIT_ID,
        "tenant_id": TENANT,
        "timestamp": "2026-11-26T16:19:16.123Z",
        "event_type": "alert.classified",
        "actor_type": "agent",
        "actor_id": "triage-agent",
    }
    for name, value in changes.items():
        if value is ...:
            event.pop(name, None)
        else:
            event[name] = value
    return event


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode("utf-8")


def parse(
    value: bytes | None, key: bytes | None = KEY, limits: ValidationLimits = LIMITS
) -> dict[str, Any]:
    return parse_event(key, value, limits, NOW)


def rejected(value: bytes | None, key: bytes | None = KEY,
             limits: ValidationLimits = LIMITS) -> EventRejected:
    with pytest.raises(EventRejected) as info:
        parse(value, key, limits)
    assert info.value.reason
    assert str(info.value) == info.value.reason
    assert info.value.kind in REJECTION_KINDS
    return info.value


def with_raw_field(name: str, raw_json: str) -> bytes:
    """A minimal event with one field whose JSON text is given verbatim."""
    text = json.dumps(minimal())
    return (text[:-1] + f', "{name}": {raw_json}}}').encode("utf-8")


# --------------------------------------------------------------------------- accepted events


def test_minimal_event_gets_all_defaults() -> None:
    event = parse(encode(minimal()))
    assert event == {
        "audit_id": AUDIT_ID,
        "tenant_id": TENANT,
        "timestamp": "2026-11-26T16:19:16.123000Z",
        "event_type": "alert.classified",
        "event_category": "decision",
        "severity": "info",
        "actor_type": "agent",
        "actor_id": "triage-agent",
        "actor_permissions": [],
        "investigation_id": "",
        "alert_id": "",
        "entity_ids": [],
        "context": {},
        "decision": {},
        "outcome": {},
        "source_service": "",
        "record_version": "1.0",
    }
    assert set(event) == set(EVENT_FIELDS)


def test_full_event_is_kept_as_sent() -> None:
    sent = minimal(
        event_category="decision",
        severity="critical",
        actor_permissions=["alerts:read", "alerts:write"],
        investigation_id="inv-1",
        alert_id="alert-1",
        entity_ids=["host-2", "host-1"],
        context={"llm_provider": "anthropic", "llm_input_tokens": 10, "llm_cost_usd": 0.01,
                 "llm_extended_thinking_used": False, "evidence_refs": ["a"],
                 "provider_health": {"anthropic": "ok"}},
        decision={"confidence": 0.5, "classification": "tp", "recommended_actions": ["x"]},
        outcome={"duration_ms": 7, "analyst_feedback_rating": 5, "cost_incurred_usd": 0.2},
        source_service="orchestrator",
        record_version="2.1",
    )
    event = parse(encode(sent))
    for name in EVENT_FIELDS:
        if name != "timestamp":
            assert event[name] == sent[name], name
    assert event["entity_ids"] == ["host-2", "host-1"]


@pytest.mark.parametrize("event_type", sorted(set(EVENT_CATEGORIES) - RESERVED_EVENT_TYPES))
def test_event_category_is_derived_from_the_taxonomy(event_type: str) -> None:
    event = parse(encode(minimal(event_type=event_type)))
    assert event["event_category"] == EVENT_CATEGORIES[event_type]


@pytest.mark.parametrize(
    ("event_type", "category"),
    [
        ("alert.classified", "decision"),
        ("routing.provider_failover", "decision"),
        ("response.executed", "action"),
        ("embedding.reindexed", "action"),
        ("approval.granted", "approval"),
        ("shadow.go_live_approved", "approval"),
        ("injection.detected", "security"),
        ("spend.hard_limit", "security"),
        ("kill_switch.activated", "system"),
        ("circuit_breaker.closed", "system"),
    ],
)
def test_taxonomy_matches_the_spec(event_type: str, category: str) -> None:
    assert EVENT_CATEGORIES[event_type] == category
    assert parse(encode(minimal(event_type=event_type)))["event_category"] == category
    explicit = parse(encode(minimal(event_type=event_type, event_category=category)))
    assert explicit["event_category"] == category


def test_taxonomy_size_matches_the_spec() -> None:
    categories = list(EVENT_CATEGORIES.values())
    assert categories.count("decision") == 12
    assert categories.count("action") == 11
    assert categories.count("approval") == 8
    assert categories.count("security") == 6
    assert categories.count("system") == 8  # including the reserved system.genesis


def test_null_event_category_is_derived() -> None:
    assert parse(encode(minimal(event_category=None)))["event_category"] == "decision"


@pytest.mark.parametrize(
    "sent",
    [
        "0E1F2A3B-4C5D-6E7F-8091-A2B3C4D5E6F7",
        "0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7",
        "{0e1f2a3b-4c5d-6e7f-8091-a2b3c4d5e6f7}",
        "urn:uuid:0e1f2a3b-4c5d-6e7f-8091-A2B3C4D5E6F7",
    ],
)
def test_audit_id_is_canonicalised(sent: str) -> None:
    assert parse(encode(minimal(audit_id=sent)))["audit_id"] == AUDIT_ID


@pytest.mark.parametrize(
    ("sent", "rendered"),
    [
        ("2026-11-26T16:19:16Z", "2026-11-26T16:19:16.000000Z"),
        ("2026-11-26T16:19:16.123+00:00", "2026-11-26T16:19:16.123000Z"),
        ("2026-11-26T21:49:16.5+05:30", "2026-11-26T16:19:16.500000Z"),
        ("2026-11-26T16:19:16.123456789Z", "2026-11-26T16:19:16.123456Z"),
    ],
)
def test_timestamp_is_rendered_in_the_hashed_form(sent: str, rendered: str) -> None:
    assert parse(encode(minimal(timestamp=sent)))["timestamp"] == rendered


def test_key_none_is_accepted() -> None:
    assert parse(encode(minimal()), key=None)["tenant_id"] == TENANT


def test_unknown_nested_keys_are_kept_as_sent() -> None:
    context = {"llm_provider": "x", "custom_thing": {"deep": [1, "two", None, True]},
               "Mixed-Case Key": "v", "": "empty key"}
    decision = {"confidence": 0.9, "extra_note": "kept"}
    outcome = {"vendor_field": [3, 2, 1]}
    event = parse(encode(minimal(context=context, decision=decision, outcome=outcome)))
    assert event["context"] == context
    assert event["decision"] == decision
    assert event["outcome"] == outcome


def test_nested_ints_stay_ints() -> None:
    context = {"llm_input_tokens": 5, "llm_cost_usd": 3, "other": 7, "big": 10**30}
    event = parse(encode(minimal(context=context, outcome={"cost_incurred_usd": 0})))
    assert type(event["context"]["llm_input_tokens"]) is int
    assert type(event["context"]["llm_cost_usd"]) is int
    assert type(event["context"]["other"]) is int
    assert event["context"]["big"] == 10**30
    assert type(event["outcome"]["cost_incurred_usd"]) is int


def test_nested_floats_are_made_jsonb_stable() -> None:
    raw = with_raw_field("context", '{"neg": -0.0, "big": 1e16, "small": 1e-07, "f": 1.5}')
    context = parse(raw)["context"]
    assert context == {"neg": 0.0, "big": 10000000000000000, "small": 1e-07, "f": 1.5}
    assert json.dumps(context["neg"]) == "0.0"
    assert type(context["big"]) is int


@pytest.mark.parametrize(
    "outcome",
    [
        {"analyst_feedback_correct": None},
        {"analyst_feedback_correct": True},
        {"analyst_feedback_correct": False},
        {"analyst_feedback_rating": None},
        {"analyst_feedback_rating": 1},
        {"analyst_feedback_rating": 5},
    ],
)
def test_nullable_outcome_fields_accept_their_values(outcome: dict[str, Any]) -> None:
    assert parse(encode(minimal(outcome=outcome)))["outcome"] == outcome


@pytest.mark.parametrize("confidence", [0.0, 1.0, 0, 1, 0.5])
def test_confidence_bounds_are_inclusive(confidence: float) -> None:
    event = parse(encode(minimal(decision={"confidence": confidence})))
    assert event["decision"]["confidence"] == confidence


@pytest.mark.parametrize("tenant", ["a", "A.b_c:d-9", "x" * 128])
def test_tenant_ids_within_the_pattern_are_accepted(tenant: str) -> None:
    assert parse(encode(minimal(tenant_id=tenant)), key=tenant.encode())["tenant_id"] == tenant


def test_unicode_text_is_accepted() -> None:
    event = parse(encode(minimal(actor_id="Zoë \U0001f600", context={"note": "日本語"})))
    assert event["actor_id"] == "Zoë \U0001f600"
    assert event["context"] == {"note": "日本語"}


def test_event_at_the_size_limit_is_accepted() -> None:
    value = encode(minimal())
    assert parse(value, limits=ValidationLimits(max_event_bytes=len(value)))["tenant_id"] == TENANT


def test_event_within_the_clock_window_is_accepted() -> None:
    assert parse(encode(minimal(timestamp="2000-01-01T00:00:00Z")))["timestamp"] == (
        "2000-01-01T00:00:00.000000Z"
    )
    edge = (NOW + LIMITS.max_clock_skew).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert parse(encode(minimal(timestamp=edge)))["timestamp"] == edge


def test_moderate_nesting_is_accepted() -> None:
    nested: Any = "leaf"
    for _ in range(20):
        nested = {"n": [nested]}
    assert parse(encode(minimal(context={"tree": nested})))["context"] == {"tree": nested}


# --------------------------------------------------------------------------- rejections: bytes


def test_value_not_utf8_is_rejected() -> None:
    value = encode(minimal()).replace(b"triage-agent", b"triage-\xff\xfe")
    assert "not valid UTF-8" in rejected(value).reason


def test_encoded_surrogate_bytes_are_not_utf8() -> None:
    value = encode(minimal()).replace(b"triage-agent", b"triage-\xed\xa0\x80")
    assert "UTF-8" in rejected(value).reason


def test_key_not_utf8_is_rejected() -> None:
    assert "key is not valid UTF-8" in rejected(encode(minimal()), key=b"\xff").reason


@pytest.mark.parametrize(
    "value",
    [b"", b"not json", b"{'audit_id': 'x'}", b"{\"a\": 1,}", b"\xef\xbb\xbf{}"],
)
def test_value_not_json_is_rejected(value: bytes) -> None:
    assert "not valid JSON" in rejected(value).reason


def test_truncated_json_is_rejected() -> None:
    value = encode(minimal())[:-10]
    assert "not valid JSON" in rejected(value).reason


def test_json_with_trailing_data_is_rejected() -> None:
    assert "not valid JSON" in rejected(encode(minimal()) + b" {}").reason


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"[]", "list"),
        (b'[{"audit_id": "x"}]', "list"),
        (b'"just a string"', "str"),
        (b"42", "int"),
        (b"4.5", "float"),
        (b"true", "bool"),
        (b"null", "NoneType"),
    ],
)
def test_json_that_is_not_an_object_is_rejected(value: bytes, kind: str) -> None:
    reason = rejected(value).reason
    assert "expected an object" in reason
    assert kind in reason


def test_tombstone_is_rejected() -> None:
    assert "tombstone" in rejected(None).reason


def test_oversized_value_is_rejected() -> None:
    value = encode(minimal(context={"blob": "x" * 5000}))
    error = rejected(value, limits=ValidationLimits(max_event_bytes=4096))
    assert "above the limit of 4096" in error.reason
    assert str(len(value)) in error.reason


def test_one_byte_over_the_limit_is_rejected() -> None:
    value = encode(minimal())
    error = rejected(value, limits=ValidationLimits(max_event_bytes=len(value) - 1))
    assert "above the limit" in error.reason


def test_default_limit_is_one_mebibyte() -> None:
    value = encode(minimal(context={"blob": "x" * 1_048_576}))
    assert "above the limit of 1048576" in rejected(value).reason


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected(constant: str) -> None:
    reason = rejected(with_raw_field("context", f'{{"x": {constant}}}')).reason
    assert constant.lstrip("-") in reason
    assert "not valid JSON" in reason


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_in_a_typed_field_are_rejected(constant: str) -> None:
    raw = with_raw_field("decision", f'{{"confidence": {constant}}}')
    assert constant.lstrip("-") in rejected(raw).reason


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("context", '{"x": 1e400}'),
        ("context", '{"llm_cost_usd": 1e400}'),
        ("outcome", '{"cost_incurred_usd": -1e400}'),
        ("context", '{"nested": [1, {"deep": 2e308}]}'),
    ],
)
def test_number_overflowing_to_infinity_is_rejected(field: str, raw: str) -> None:
    rejected(with_raw_field(field, raw))


def test_integer_with_too_many_digits_is_rejected() -> None:
    reason = rejected(with_raw_field("context", '{"x": ' + "9" * 5000 + "}")).reason
    assert "JSON" in reason


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (encode(minimal(actor_id="triage\x00agent")), "event.actor_id"),
        (encode(minimal(context={"a": {"b": ["ok", "bad\x00"]}})), "event.context.a.b"),
        (encode(minimal(entity_ids=["host-1", "\x00"])), "event.entity_ids"),
        (encode(minimal(context={"bad\x00key": 1})), "a key of event.context"),
        (encode(minimal(outcome={"x": {"k\x00": "v"}})), "a key of event.outcome.x"),
    ],
)
def test_nul_characters_are_rejected_anywhere(value: bytes, where: str) -> None:
    assert b"\\u0000" in value
    reason = rejected(value).reason
    assert "NUL character" in reason
    assert where in reason


def test_nul_in_a_top_level_key_is_rejected() -> None:
    value = with_raw_field("bad\\u0000key", "1")
    assert "NUL character in a key of event" in rejected(value).reason


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("actor_id", '"triage\\ud800"'),
        ("context", '{"note": "\\udfff lone low"}'),
        ("context", '{"\\ud800": 1}'),
        ("entity_ids", '["\\ude00"]'),
    ],
)
def test_lone_surrogates_are_rejected(field: str, raw: str) -> None:
    text = json.dumps(minimal())
    if field in minimal():
        text = text.replace('"triage-agent"', raw)
        value = text.encode()
    else:
        value = with_raw_field(field, raw)
    assert "surrogate" in rejected(value).reason


def test_paired_surrogate_escapes_are_accepted() -> None:
    value = json.dumps(minimal()).replace('"triage-agent"', '"ok \\ud83d\\ude00"').encode()
    assert parse(value)["actor_id"] == "ok \U0001f600"


@pytest.mark.parametrize("depth", [100, 10_000])
def test_deep_nesting_is_rejected(depth: int) -> None:
    value = with_raw_field("context", '{"x": ' + "[" * depth + "]" * depth + "}")
    assert "nested deeper than" in rejected(value).reason


def test_deep_object_nesting_is_rejected() -> None:
    value = with_raw_field("context", '{"a": ' * 10_000 + "1" + "}" * 10_000)
    assert "nested deeper than" in rejected(value).reason


@pytest.mark.parametrize(
    "raw",
    [
        f'{{"audit_id": "{AUDIT_ID}", "audit_id": "{AUDIT_ID}"}}',
        '{"tenant_id": "tenant-acme", "tenant_id": "tenant-evil"}',
    ],
)
def test_duplicate_top_level_keys_are_rejected(raw: str) -> None:
    assert "duplicate JSON key" in rejected(raw.encode()).reason


def test_duplicate_nested_keys_are_rejected() -> None:
    reason = rejected(with_raw_field("context", '{"llm_model_id": "a", "llm_model_id": "b"}'))
    assert "duplicate JSON key 'llm_model_id'" in reason.reason


# --------------------------------------------------------------------------- rejections: schema


@pytest.mark.parametrize("field", ["audit_idd", "extra", "record_hash", "sequence_number"])
def test_unknown_top_level_field_is_rejected(field: str) -> None:
    error = rejected(encode(minimal(**{field: "x"})))
    assert "schema violation" in error.reason
    assert field in error.reason


@pytest.mark.parametrize(
    "field", ["audit_id", "tenant_id", "timestamp", "event_type", "actor_type", "actor_id"]
)
def test_missing_required_field_is_rejected(field: str) -> None:
    reason = rejected(encode(minimal(**{field: ...})), key=None).reason
    assert "schema violation" in reason
    assert field in reason
    assert "required" in reason.lower()


@pytest.mark.parametrize(
    ("nested", "value", "where"),
    [
        ("context", {"llm_input_tokens": "5"}, "context.llm_input_tokens"),
        ("context", {"llm_input_tokens": 5.0}, "context.llm_input_tokens"),
        ("context", {"llm_provider": 1}, "context.llm_provider"),
        ("context", {"llm_cost_usd": "0.1"}, "context.llm_cost_usd"),
        ("context", {"llm_extended_thinking_used": "true"}, "context.llm_extended_thinking_used"),
        ("context", {"llm_extended_thinking_used": 1}, "context.llm_extended_thinking_used"),
        ("context", {"evidence_refs": "a,b"}, "context.evidence_refs"),
        ("context", {"evidence_refs": ["a", 2]}, "context.evidence_refs.1"),
        ("context", {"provider_health": ["ok"]}, "context.provider_health"),
        ("decision", {"confidence": 1.5}, "decision.confidence"),
        ("decision", {"confidence": -0.1}, "decision.confidence"),
        ("decision", {"confidence": "0.9"}, "decision.confidence"),
        ("decision", {"classification": None}, "decision.classification"),
        ("decision", {"recommended_actions": [None]}, "decision.recommended_actions.0"),
        ("outcome", {"analyst_feedback_rating": 6}, "outcome.analyst_feedback_rating"),
        ("outcome", {"analyst_feedback_rating": 0}, "outcome.analyst_feedback_rating"),
        ("outcome", {"analyst_feedback_rating": 4.0}, "outcome.analyst_feedback_rating"),
        ("outcome", {"analyst_feedback_correct": "yes"}, "outcome.analyst_feedback_correct"),
        ("outcome", {"analyst_feedback_correct": 1}, "outcome.analyst_feedback_correct"),
        ("outcome", {"duration_ms": "12"}, "outcome.duration_ms"),
        ("outcome", {"cost_incurred_usd": "1"}, "outcome.cost_incurred_usd"),
    ],
)
def test_wrong_type_in_a_known_nested_field_is_rejected(
    nested: str, value: dict[str, Any], where: str
) -> None:
    error = rejected(encode(minimal(**{nested: value})))
    assert error.reason.startswith("schema violation")
    assert where in error.reason
    assert error.tenant_id == TENANT
    assert error.audit_id == AUDIT_ID


@pytest.mark.parametrize(
    ("nested", "value", "where"),
    [
        ("context", {"llm_input_tokens": True}, "context.llm_input_tokens"),
        ("context", {"llm_cost_usd": False}, "context.llm_cost_usd"),
        ("decision", {"confidence": True}, "decision.confidence"),
        ("outcome", {"analyst_feedback_rating": True}, "outcome.analyst_feedback_rating"),
        ("outcome", {"duration_ms": False}, "outcome.duration_ms"),
    ],
)
def test_bool_where_a_number_is_expected_is_rejected(
    nested: str, value: dict[str, Any], where: str
) -> None:
    assert where in rejected(encode(minimal(**{nested: value}))).reason


@pytest.mark.parametrize("nested", ["context", "decision", "outcome"])
@pytest.mark.parametrize("value", [None, [], "x", 1])
def test_nested_objects_must_be_objects(nested: str, value: Any) -> None:
    reason = rejected(encode(minimal(**{nested: value}))).reason
    assert "schema violation" in reason
    assert nested in reason


@pytest.mark.parametrize(
    "field", ["investigation_id", "alert_id", "source_service", "record_version", "actor_id",
              "timestamp", "event_type", "audit_id"]
)
def test_null_for_a_string_field_is_rejected(field: str) -> None:
    reason = rejected(encode(minimal(**{field: None}))).reason
    assert "schema violation" in reason
    assert field in reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("actor_permissions", "alerts:read"),
        ("actor_permissions", [1]),
        ("entity_ids", None),
        ("entity_ids", [["nested"]]),
        ("investigation_id", 12),
        ("timestamp", 1732638000),
        ("record_version", 1.0),
        ("record_version", ""),
    ],
)
def test_wrong_type_in_a_top_level_field_is_rejected(field: str, value: Any) -> None:
    reason = rejected(encode(minimal(**{field: value}))).reason
    assert "schema violation" in reason
    assert field in reason


def test_many_schema_errors_are_summarised_in_one_line() -> None:
    value = encode({"a": 1, "b": 2, "c": 3, "d": 4})
    reason = rejected(value, key=None).reason
    assert "\n" not in reason
    assert "more)" in reason


@pytest.mark.parametrize(
    "tenant",
    [
        "tenant'; DROP TABLE audit_records; --",
        "tenant\" OR 1=1",
        "../etc/passwd",
        "tenant/acme",
        "tenant\\acme",
        "x" * 10_000,
        "x" * 129,
        "",
        "tenant acme",
        "tenant-acme\n",
        "t\u00e9nant",
        "tenant%00",
    ],
)
def test_bad_tenant_ids_are_rejected(tenant: str) -> None:
    reason = rejected(encode(minimal(tenant_id=tenant)), key=None).reason
    assert "schema violation" in reason
    assert "tenant_id" in reason


def test_key_tenant_mismatch_is_rejected() -> None:
    error = rejected(encode(minimal()), key=b"tenant-globex")
    assert "does not match tenant_id" in error.reason
    assert "tenant-globex" in error.reason
    assert error.tenant_id == TENANT
    assert error.audit_id == AUDIT_ID


def test_key_match_is_exact() -> None:
    assert "does not match" in rejected(encode(minimal()), key=b"TENANT-ACME").reason
    assert "does not match" in rejected(encode(minimal()), key=b"tenant-acme ").reason


def test_reserved_genesis_type_is_rejected() -> None:
    value = encode(minimal(event_type="system.genesis", actor_type="system"))
    error = rejected(value)
    assert "reserved" in error.reason
    assert "system.genesis" in error.reason
    assert error.tenant_id == TENANT


@pytest.mark.parametrize("event_type", ["alert.unknown", "Alert.Classified", "", "system"])
def test_unknown_event_type_is_rejected(event_type: str) -> None:
    assert "unknown event_type" in rejected(encode(minimal(event_type=event_type))).reason


@pytest.mark.parametrize(
    ("event_type", "category"),
    [("alert.classified", "action"), ("approval.granted", "security"),
     ("alert.classified", "Decision"), ("alert.classified", "")],
)
def test_event_category_not_matching_the_taxonomy_is_rejected(
    event_type: str, category: str
) -> None:
    value = encode(minimal(event_type=event_type, event_category=category))
    reason = rejected(value).reason
    assert "does not match" in reason
    assert "event_category" in reason
    assert repr(EVENT_CATEGORIES[event_type]) in reason


@pytest.mark.parametrize("severity", ["debug", "INFO", "Warning", "", None, 1])
def test_bad_severity_is_rejected(severity: Any) -> None:
    reason = rejected(encode(minimal(severity=severity))).reason
    assert "severity" in reason


@pytest.mark.parametrize("actor_type", ["robot", "Agent", "", None])
def test_bad_actor_type_is_rejected(actor_type: Any) -> None:
    assert "actor_type" in rejected(encode(minimal(actor_type=actor_type))).reason


@pytest.mark.parametrize("severity", ["info", "warning", "critical"])
def test_valid_severities_are_accepted(severity: str) -> None:
    assert parse(encode(minimal(severity=severity)))["severity"] == severity


@pytest.mark.parametrize("actor_type", ["agent", "human", "system", "scheduler"])
def test_valid_actor_types_are_accepted(actor_type: str) -> None:
    assert parse(encode(minimal(actor_type=actor_type)))["actor_type"] == actor_type


def test_empty_actor_id_is_rejected() -> None:
    assert "actor_id" in rejected(encode(minimal(actor_id=""))).reason


@pytest.mark.parametrize(
    "timestamp",
    ["2026-11-26T16:19:16.123", "2026-11-26", "2026-02-30T00:00:00Z", "yesterday",
     "2026-11-26T16:19:16+0000"],
)
def test_bad_timestamp_is_rejected(timestamp: str) -> None:
    error = rejected(encode(minimal(timestamp=timestamp)))
    assert error.reason.startswith("timestamp")
    assert error.tenant_id == TENANT
    assert error.audit_id == AUDIT_ID


@pytest.mark.parametrize(
    "timestamp",
    ["1999-12-31T23:59:59.999999Z", "1970-01-01T00:00:00Z", "2000-01-01T00:59:59+01:00"],
)
def test_timestamp_in_the_far_past_is_rejected(timestamp: str) -> None:
    assert "outside the accepted window" in rejected(encode(minimal(timestamp=timestamp))).reason


def test_timestamp_beyond_the_clock_skew_is_rejected() -> None:
    beyond = NOW + LIMITS.max_clock_skew + timedelta(microseconds=1)
    value = encode(minimal(timestamp=beyond.strftime("%Y-%m-%dT%H:%M:%S.%fZ")))
    assert "outside the accepted window" in rejected(value).reason
    assert "outside" in rejected(encode(minimal(timestamp="2126-01-01T00:00:00Z"))).reason


def test_clock_skew_is_configurable() -> None:
    value = encode(minimal(timestamp=(NOW + timedelta(minutes=10)).isoformat()))
    assert parse(value)["tenant_id"] == TENANT
    strict = ValidationLimits(max_clock_skew=timedelta(minutes=5))
    assert "outside the accepted window" in rejected(value, limits=strict).reason


@pytest.mark.parametrize(
    "audit_id",
    [
        "not-a-uuid",
        "",
        "0e1f2a3b-4c5d-6e7f-8091-a2b3c4d5e6f",
        "0e1f2a3b-4c5d-6e7f-8091-a2b3c4d5e6fg",
        "0e1f2a3b-4c5d-6e7f-8091-a2b3c4d5e6f7-00",
    ],
)
def test_invalid_uuid_is_rejected(audit_id: str) -> None:
    error = rejected(encode(minimal(audit_id=audit_id)))
    assert "audit_id" in error.reason
    assert "UUID" in error.reason
    assert error.tenant_id == TENANT


@pytest.mark.parametrize("audit_id", [12345, None, ["x"]])
def test_non_string_audit_id_is_rejected(audit_id: Any) -> None:
    error = rejected(encode(minimal(audit_id=audit_id)))
    assert "audit_id" in error.reason
    assert error.audit_id is None
    assert error.tenant_id == TENANT


# --------------------------------------------------------------------------- rejection metadata


def test_rejection_carries_ids_read_before_the_schema_failed() -> None:
    error = rejected(encode(minimal(severity="loud")))
    assert error.tenant_id == TENANT
    assert error.audit_id == AUDIT_ID


def test_rejection_carries_no_ids_when_the_value_cannot_be_read() -> None:
    for value in (b"\xff", b"not json", b"[]", None):
        error = rejected(value)
        assert error.tenant_id is None
        assert error.audit_id is None


def test_rejection_carries_no_tenant_when_it_is_not_a_string() -> None:
    error = rejected(encode(minimal(tenant_id=42)), key=None)
    assert error.tenant_id is None
    assert error.audit_id == AUDIT_ID


def test_event_rejected_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="tombstone"):
        parse(None)


# --------------------------------------------------------------------------- end to end


def jsonb_reload(value: Any) -> Any:
    """What PostgreSQL JSONB gives back for a value written as Python's json.dumps text.

    JSONB stores numbers as `numeric`: printed in plain digits, with no negative zero.
    """
    def number(text: str) -> Any:
        exact = Decimal(text)
        plain = format(abs(exact) if exact == 0 else exact, "f")
        return json.loads(plain)

    return json.loads(json.dumps(value), parse_float=number)


def test_parsed_events_chain_and_survive_a_jsonb_round_trip() -> None:
    ingested = NOW + timedelta(seconds=1)
    genesis = genesis_record(TENANT, NOW)
    head = advance(ChainHead.empty(TENANT), genesis)
    records = [genesis]
    raws = [
        with_raw_field("context", '{"neg": -0.0, "big": 1e16, "huge": 1e300, "tiny": 1e-07}'),
        with_raw_field("outcome", '{"cost_incurred_usd": 1.5e17, "duration_ms": 12}'),
        encode(minimal(actor_id="\U0001f600 émoji", context={"k\u00fc": ["b", "a"]})),
    ]
    for raw in raws:
        record = chain_event(head, parse(raw), ingested)
        records.append(record)
        head = advance(head, record)

    reloaded = [jsonb_reload(record) for record in records]
    for before, after in zip(records, reloaded, strict=True):
        assert compute_record_hash(after) == before["record_hash"]
    assert verify_chain(TENANT, reloaded, expected_head=head).valid
    assert type(reloaded[1]["context"]["big"]) is int


def test_jsonb_reload_helper_really_changes_unstable_values() -> None:
    # Guards the test above: without jsonb_stable these values would not survive.
    assert json.dumps(jsonb_reload(-0.0)) == "0.0"
    assert type(jsonb_reload(1e16)) is int
    assert jsonb_reload(1e-07) == 1e-07
