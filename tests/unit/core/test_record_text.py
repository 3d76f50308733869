"""Rendering a record straight from its row (`record_text`) against the definition.

The reference here is the spec's own formula (docs/hash-chain.md), written out with the
standard library: an export line is `json.dumps(record, sort_keys=True,
separators=(",", ":"))` and the hash is SHA-256 of the same without record_hash. Rows are
built as PostgreSQL hands them to the reader: JSONB as its text (spaced, keys in
PostgreSQL's order, non-ASCII raw), everything else as the driver's value.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import TENANT_ALPHABET, json_values, wire_events

from audit_service.core.chain import (
    GENESIS_PREVIOUS_HASH,
    ChainHead,
    advance,
    chain_event,
    compute_record_hash,
    genesis_record,
    verify_chain,
)
from audit_service.core.events import ValidationLimits, parse_event
from audit_service.core.record_text import (
    RECORD_HASH,
    ROW_FIELDS,
    export_line,
    record_of,
    row_hash,
    verify_rows,
)

NOW = datetime(2026, 11, 26, 16, 19, 16, 123456, tzinfo=UTC)
LIMITS = ValidationLimits()
VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "chain.jsonl"
JSONB = ("context", "decision", "outcome")
EXAMPLES = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def reference_line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


def reference_hash(record: dict[str, Any]) -> str:
    hashed = {key: value for key, value in record.items() if key != "record_hash"}
    text = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _postgres_order(value: Any) -> Any:
    """Objects with their keys in JSONB's order (shorter first, then bytewise)."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
        return {key: _postgres_order(value[key]) for key in keys}
    if isinstance(value, list):
        return [_postgres_order(item) for item in value]
    return value


def jsonb_text(value: Any) -> str:
    """Roughly what `jsonb::text` prints: spaces after separators, raw non-ASCII."""
    return json.dumps(_postgres_order(value), ensure_ascii=False)


def row_of(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(jsonb_text(record[field]) if field in JSONB else record[field]
                 for field in ROW_FIELDS)


@st.composite
def chains(draw: st.DrawFn, min_events: int = 0) -> list[dict[str, Any]]:
    """Records as the writer chains them, genesis first."""
    tenant = draw(st.text(TENANT_ALPHABET, min_size=1, max_size=16))
    events = draw(st.lists(wire_events(tenant), min_size=min_events, max_size=6))
    records = [genesis_record(tenant, NOW)]
    head = advance(ChainHead.empty(tenant), records[0])
    for index, wire in enumerate(events):
        event = parse_event(tenant.encode(), json.dumps(wire).encode(), LIMITS, NOW)
        records.append(chain_event(head, event, NOW + timedelta(microseconds=index)))
        head = advance(head, records[-1])
    return records


EVERY_SHAPE = {
    "actor_id": 'ünï "quoted" \\ back\tslash\n😀', "actor_permissions": ["a", "", "ü😀"],
    "investigation_id": "", "alert_id": "Ålert\x01\x7f", "entity_ids": [],
    "source_service": "/path/ok", "record_version": "1.0", "severity": "critical",
    "context": {"llm_provider": "日本語 😀", "llm_cost_usd": 1e-07, "big": 2**70,
                "exp": 10**16, "zero": 0.0, "neg": -1.5, "t": True, "f": False, "none": None,
                "nested": {"b": [3, 1, {"z": "", "a": []}], "a": {}}, "\ufffd": 1, "😀": 2,
                "": "empty key"},
    "decision": {}, "outcome": {"analyst_feedback_rating": None, "duration_ms": 0},
}


def _shaped_chain(events: int = 1) -> list[dict[str, Any]]:
    """Genesis, then `events` records with every field shape."""
    records = [genesis_record("tenant-ü", NOW)]
    for n in range(events):
        event = {"audit_id": f"0f8fad5b-d9cb-469f-a165-7086772895{n:02d}",
                 "tenant_id": "tenant-ü", "timestamp": "2026-11-26T16:19:16.000001Z",
                 "event_type": "alert.classified", "event_category": "decision",
                 "actor_type": "agent", **EVERY_SHAPE}
        head = advance(ChainHead.empty("tenant-ü"), records[-1])
        records.append(chain_event(head, event, NOW))
    return records


def test_a_record_with_every_field_shape_renders_as_the_spec_says() -> None:
    record = _shaped_chain()[-1]
    row = row_of(record)
    assert export_line(row) == reference_line(record)
    assert row_hash(row) == reference_hash(record) == record["record_hash"]
    assert record_of(row) == record


def test_the_vectors_render_byte_for_byte() -> None:
    lines = VECTORS.read_text(encoding="ascii").splitlines(keepends=True)
    for line in lines:
        record = json.loads(line)
        assert export_line(row_of(record)) == line
        assert row_hash(row_of(record)) == record["record_hash"]


@EXAMPLES
@given(chains())
def test_any_chained_record_renders_as_the_spec_says(records: list[dict[str, Any]]) -> None:
    for record in records:
        row = row_of(record)
        assert export_line(row) == reference_line(record)
        assert row_hash(row) == reference_hash(record) == record["record_hash"]


def _same_as_verify_chain(tenant: str, rows: list[tuple[Any, ...]], **options: Any) -> None:
    expected = verify_chain(tenant, [record_of(row) for row in rows], **options)
    assert verify_rows(tenant, rows, **options) == expected


@EXAMPLES
@given(chains(min_events=1), st.data())
def test_verify_rows_reports_exactly_what_verify_chain_reports(
    records: list[dict[str, Any]], data: st.DataObject,
) -> None:
    """Whatever was done to the rows, the result (break, evidence, counts) is the same."""
    tenant = records[0]["tenant_id"]
    rows = [list(row_of(record)) for record in records]
    change = data.draw(st.sampled_from(["none", "field", "delete", "swap", "truncate"]))
    index = data.draw(st.integers(0, len(rows) - 1), label="record")
    if change == "field":
        column = data.draw(st.integers(0, len(ROW_FIELDS) - 1), label="column")
        value = data.draw(json_values, label="value")
        field = ROW_FIELDS[column]
        rows[index][column] = jsonb_text(value) if field in JSONB else value
        if data.draw(st.booleans(), label="attacker recomputes record_hash"):
            with contextlib.suppress(TypeError, ValueError):
                rows[index][ROW_FIELDS.index("record_hash")] = compute_record_hash(
                    record_of(rows[index]))
    elif change == "delete":
        del rows[index]
    elif change == "swap" and index > 0:
        rows[index - 1], rows[index] = rows[index], rows[index - 1]
    elif change == "truncate":
        rows = rows[:index]
    head = advance(ChainHead.empty(tenant), records[-1])
    start = data.draw(st.integers(0, len(records) - 1), label="start")
    tuples = [tuple(row) for row in rows]
    _same_as_verify_chain(tenant, tuples, expected_head=head)
    _same_as_verify_chain(tenant, tuples[start:], start_sequence=start,
                          expected_previous_hash=records[start - 1]["record_hash"]
                          if start else None)


REPLACEMENTS = (None, 0, 1.0, True, "", "x", ["x"], {"k": 1}, GENESIS_PREVIOUS_HASH)


def test_verify_rows_matches_verify_chain_for_every_column_and_any_value() -> None:
    """Each column of each record set to other values, rehashed by the attacker or not."""
    records = _shaped_chain(events=2)
    tenant, head = records[0]["tenant_id"], advance(ChainHead.empty("tenant-ü"), records[-1])
    clean = [row_of(record) for record in records]
    for index in range(len(clean)):
        for column, field in enumerate(ROW_FIELDS):
            for value in (*REPLACEMENTS, clean[index - 1][column]):
                row = list(clean[index])
                row[column] = jsonb_text(value) if field in JSONB else value
                variants = [row]
                with contextlib.suppress(TypeError, ValueError):
                    variants.append([*row[:RECORD_HASH], compute_record_hash(record_of(row)),
                                     *row[RECORD_HASH + 1:]])
                for variant in variants:
                    rows = [*clean[:index], tuple(variant), *clean[index + 1:]]
                    _same_as_verify_chain(tenant, rows, expected_head=head)


def test_verify_rows_of_nothing_is_what_verify_chain_says() -> None:
    _same_as_verify_chain("t", [])
    _same_as_verify_chain("t", [], expected_head=ChainHead("t", 3, GENESIS_PREVIOUS_HASH))
    _same_as_verify_chain("t", [], expected_head=ChainHead.empty("t"))


@pytest.mark.parametrize("text", [
    ' {"a": 1}', '{"a": 1} ', "[1, 2]", '"x"', "1", "null", '{"b": {"a": []}, "a": 1.5}',
])
def test_a_jsonb_text_renders_as_json_loads_reads_it(text: str) -> None:
    row = list(row_of(_shaped_chain()[-1]))
    row[ROW_FIELDS.index("context")] = text
    assert row_hash(row) == compute_record_hash(record_of(row))


@pytest.mark.parametrize("text", ["nul", '{"a": 1}x', "", "{", '{"a": 1} {}'])
def test_a_jsonb_text_json_loads_refuses_is_refused(text: str) -> None:
    row = list(row_of(_shaped_chain()[-1]))
    row[ROW_FIELDS.index("context")] = text
    with pytest.raises(ValueError):
        record_of(row)
    with pytest.raises(ValueError):
        row_hash(row)
