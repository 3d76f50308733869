"""The fast path (`event_shape.well_formed`, `events.event_time`'s shortcut) must decide
exactly as the full path (pydantic, `chain.parse_timestamp`): the same rendered record, or
the same rejection with the same kind and reason.

Inputs are valid events and near misses of them: a field dropped, retyped or bent just past
a rule (an int where a float goes, a rating of 6, an upper-case UUID, a tenant id with a
space, February 30th in the hashed timestamp form), so both sides of every check are hit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import json_values, wire_events

from audit_service.core import events
from audit_service.core.chain import TimestampError, format_timestamp, parse_timestamp
from audit_service.core.event_shape import well_formed
from audit_service.core.events import EventRejected, ValidationLimits, event_time, parse_event
from audit_service.core.linking import PendingRecord, render
from audit_service.dev.samples import sample_events

NOW = datetime(2026, 11, 26, 16, 0, tzinfo=UTC)
LIMITS = ValidationLimits()

_LISTS = [[], ["a"], [1], ["a", None], "a", {}]
_STRINGS = ["", "x", None, 3, ["x"]]
_NEAR: dict[str, list[Any]] = {
    "audit_id": ["E3E70682-C209-4CAC-A29F-6FBED82C07CD", "{e3e70682-c209-4cac-a29f-6fbed82c07cd}",
                 "e3e70682c2094caca29f6fbed82c07cd", "not-a-uuid", 3, None],
    "tenant_id": ["t-1", "a", "tenant a", "t" * 129, "t" * 128, "", "t-1\n", 3],
    "event_type": ["alert.classified", "Alert.classified", "system.genesis", "nope", 3],
    "event_category": [None, "decision", "Decision", "action", "", 3],
    "severity": ["info", "critical", "Info", "", None, 1],
    "actor_type": ["agent", "AGENT", "robot", None],
    "actor_id": ["", " ", "x", 3, None],
    "actor_permissions": _LISTS, "entity_ids": _LISTS,
    "investigation_id": _STRINGS, "alert_id": _STRINGS, "source_service": _STRINGS,
    "record_version": ["", "2.0", None, 1],
    "context": [{}, [], None, "x"], "decision": [{}, []], "outcome": [{}, None],
    "timestamp": [
        "2026-02-30T00:00:00.000000Z", "2026-11-26T24:00:00.000000Z",
        "2026-11-26T15:00:00.000000z", "2026-11-26T15:00:00.0000001Z",
        "2026-11-26 15:00:00.000000Z", "2026-11-26T15:00:00Z", "2026-11-26T15:00:00.5Z",
        "1999-12-31T23:59:59.999999Z", "2026-11-28T15:00:00.000000Z",
        "\uff12026-11-26T15:00:00.000000Z",  # a full-width digit: not ASCII
        "2026-11-26T15:00:00.000000+00:00", "0000-01-01T00:00:00.000000Z", 3,
    ],
}
"""Per top-level field: values just inside and just outside its rules."""
_FLOATS = [0, 1, 0.0, 0.5, 1.0, 1.5, -0.5, -0.0, 1e16, True, None, "0.5"]
_INTS = [0, 1, 5, 6, -1, 2**70, 1.0, True, None, "1"]
_NEAR_NESTED: dict[str, dict[str, list[Any]]] = {
    "context": {"llm_cost_usd": _FLOATS, "llm_input_tokens": _INTS,
                "llm_extended_thinking_used": [True, False, 0, None],
                "provider_health": [{}, {"a": 1}, [], None], "evidence_refs": _LISTS,
                "llm_provider": _STRINGS, "x-free": _STRINGS},
    "decision": {"confidence": _FLOATS, "recommended_actions": _LISTS,
                 "reasoning_summary": _STRINGS},
    "outcome": {"analyst_feedback_rating": _INTS, "analyst_feedback_correct": [True, None, 0],
                "duration_ms": _INTS, "cost_incurred_usd": _FLOATS},
}
"""Per nested object: known keys (and one free key) with values around their types."""


@st.composite
def near_misses(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event, then zero to three changes that may or may not break it."""
    wire = draw(wire_events(draw(st.sampled_from(["t-1", "tenant.x:y", "a"]))))
    for _ in range(draw(st.integers(0, 3))):
        change = draw(st.sampled_from(["drop", "near", "near", "extra", "nested", "nested"]))
        if change == "drop" and wire:
            wire.pop(draw(st.sampled_from(sorted(wire))))
        elif change == "near":
            field = draw(st.sampled_from(sorted(_NEAR)))
            wire[field] = draw(st.sampled_from(_NEAR[field]))
        elif change == "extra":
            wire[draw(st.sampled_from(["x", "Severity", "record_hash"]))] = draw(json_values)
        else:
            name = draw(st.sampled_from(sorted(_NEAR_NESTED)))
            nested = wire.get(name) if isinstance(wire.get(name), dict) else {}
            key = draw(st.sampled_from(sorted(_NEAR_NESTED[name])))
            nested[key] = draw(st.sampled_from(_NEAR_NESTED[name][key]) | json_values)
            wire[name] = nested
    return wire


@contextmanager
def _full_path_only() -> Iterator[None]:
    """parse_event as it would run if the fast path were never sure (it then defers)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events, "well_formed", lambda document: None)
        yield


def _outcome(key: bytes | None, value: bytes) -> PendingRecord | tuple[Any, ...]:
    try:
        return render(parse_event(key, value, LIMITS, NOW), "audit.events", 3, 42)
    except EventRejected as exc:
        return exc.kind, exc.reason, exc.tenant_id, exc.audit_id


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_misses(), st.sampled_from([None, b"t-1", b"a"]))
def test_the_fast_path_decides_exactly_as_the_full_path(
    wire: dict[str, Any], key: bytes | None
) -> None:
    value = json.dumps(wire).encode()
    fast = _outcome(key, value)
    with _full_path_only():
        full = _outcome(key, value)
    assert fast == full


def test_every_near_miss_alone_decides_exactly_as_the_full_path() -> None:
    """Each value of the tables on its own, on a realistic event: every boundary is hit."""
    base = next(iter(sample_events(["t-1"], 1, now=NOW - timedelta(minutes=1))))
    variants = [{**base, field: value} for field, values in _NEAR.items() for value in values]
    variants += [
        {**base, name: {**base.get(name, {}), key: value}}
        for name, keys in _NEAR_NESTED.items() for key, values in keys.items()
        for value in values
    ]
    for wire in variants:
        value = json.dumps(wire).encode()
        fast = _outcome(b"t-1", value)
        with _full_path_only():
            assert fast == _outcome(b"t-1", value), wire
    assert len(variants) > 150


def test_the_fast_path_takes_the_common_events() -> None:
    """Were it never sure, it would cost without saving: the realistic events pass it."""
    wires = list(sample_events(["tenant-a", "tenant-b"], 40, now=NOW - timedelta(minutes=5)))
    shaped = [well_formed(json.loads(json.dumps(wire))) for wire in wires]
    assert all(fields is not None for fields in shaped)


@pytest.mark.parametrize(("change", "value"), [
    ("audit_id", "E3E70682-C209-4CAC-A29F-6FBED82C07CD"),  # valid, normalised by pydantic
    ("event_category", None),                              # valid, rare
    ("context", {"llm_cost_usd": 1}),                      # valid: strict floats take ints
    ("severity", "Info"),
    ("actor_id", ""),
    ("tenant_id", "tenant a"),
    ("outcome", {"analyst_feedback_rating": 6}),
    ("decision", {"confidence": True}),
    ("unknown", "x"),
])
def test_the_fast_path_defers_what_it_is_not_sure_of(change: str, value: Any) -> None:
    wire = next(iter(sample_events(["tenant-a"], 1, now=NOW - timedelta(minutes=1))))
    assert well_formed(json.loads(json.dumps(wire))) is not None
    assert well_formed(json.loads(json.dumps({**wire, change: value}))) is None


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31),
                    timezones=st.just(UTC)).map(format_timestamp)
       | st.sampled_from([t for t in _NEAR["timestamp"] if isinstance(t, str)]))
def test_event_time_agrees_with_parse_and_format(text: str) -> None:
    try:
        moment = parse_timestamp(text)
    except TimestampError as exc:
        with pytest.raises(TimestampError, match=f"^{re.escape(str(exc))}$"):
            event_time(text)
        return
    assert event_time(text) == (moment, format_timestamp(moment))
