"""`linking` must produce exactly what the reference definitions produce: the hash of
`chain.compute_record_hash` over the full record, and the row of `record_mapping.copy_line`
and of an independent COPY text reference.

The daemon chains with `linking`; verifiers (and these tests) use `chain`. Any difference
would be a record that verifies nowhere, so every kind of valid value is compared here.
"""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import TENANT_ALPHABET, wire_events

from audit_service.core.chain import (
    HASHED_FIELDS,
    ChainHead,
    advance,
    chain_event,
    compute_record_hash,
    format_timestamp,
    genesis_record,
)
from audit_service.core.events import ValidationLimits, parse_event
from audit_service.core.linking import link, render
from audit_service.core.record_mapping import copy_line
from audit_service.dev.samples import sample_events

NOW = datetime(2026, 11, 26, 16, 0, tzinfo=UTC)
LIMITS = ValidationLimits()

_heads = st.builds(
    ChainHead,
    tenant_id=st.text(TENANT_ALPHABET, min_size=1, max_size=16),
    last_sequence=st.integers(0, 2**62),
    last_hash=st.text("0123456789abcdef", min_size=64, max_size=64),
)
_ingested = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                         timezones=st.just(UTC))
_coordinates = st.tuples(st.text(string.ascii_letters + ".-_\t\\", min_size=1, max_size=20),
                         st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1))


def _copy_text(value: str) -> str:
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def _reference_row(record: dict[str, Any], topic: str, partition: int, offset: int) -> str:
    """The COPY text row as PostgreSQL's documentation defines it (text format: tab
    separated, backslash escapes; a TEXT[] literal quoting every element; JSONB as compact
    JSON), written independently of `record_mapping`."""
    def array(values: list[str]) -> str:
        return "{" + ",".join(
            '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in values
        ) + "}"

    columns = [
        str(record[field]) if field == "sequence_number"
        else array(record[field]) if field in ("actor_permissions", "entity_ids")
        else json.dumps(record[field], separators=(",", ":")) if field in (
            "context", "decision", "outcome")
        else record[field]
        for field in (*HASHED_FIELDS, "record_hash")
    ]
    return "\t".join(_copy_text(column) for column in [*columns, topic]) + (
        f"\t{partition}\t{offset}\n")


def _assert_same_as_reference(event: dict[str, Any], head: ChainHead, ingested: datetime,
                              coordinates: tuple[str, int, int]) -> None:
    expected = chain_event(head, event, ingested)
    linked = link(render(event, *coordinates), head, format_timestamp(ingested))
    assert linked.record_hash == expected["record_hash"] == compute_record_hash(expected)
    assert linked.as_record() == expected
    assert linked.row == copy_line(expected, *coordinates) == _reference_row(
        expected, *coordinates)
    assert linked.sequence_number == head.last_sequence + 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), _heads, _ingested, _coordinates)
def test_linking_any_valid_event_matches_the_reference_chain(
    data: st.DataObject, head: ChainHead, ingested: datetime,
    coordinates: tuple[str, int, int],
) -> None:
    wire = data.draw(wire_events(head.tenant_id), label="event")
    event = parse_event(None, json.dumps(wire).encode(), LIMITS, NOW)
    _assert_same_as_reference(event, head, ingested, coordinates)


def test_linking_the_sample_events_matches_the_reference_chain() -> None:
    """The realistic events of `make run` (nested context, non-ASCII text, escapes)."""
    checked = 0
    events = sample_events(["tenant-a", "tenant-b"], 50, now=NOW - timedelta(minutes=5))
    for index, wire in enumerate(events):
        event = parse_event(None, json.dumps(wire).encode(), LIMITS, NOW)
        head = ChainHead(event["tenant_id"], index, f"{index:064x}")
        _assert_same_as_reference(event, head, NOW, ("audit.events", index % 4, index))
        checked += 1
    assert checked == 50


def test_a_linked_record_chains_on_like_the_reference() -> None:
    """Linking record after record gives the same chain as `chain_event` + `advance`."""
    tenant = "tenant-a"
    genesis = genesis_record(tenant, NOW)
    reference = linked_head = advance(ChainHead.empty(tenant), genesis)
    for index, wire in enumerate(sample_events([tenant], 5, now=NOW - timedelta(minutes=1))):
        event = parse_event(None, json.dumps(wire).encode(), LIMITS, NOW)
        record = chain_event(reference, event, NOW)
        reference = advance(reference, record)
        linked = link(render(event, "t", 0, index), linked_head, format_timestamp(NOW))
        linked_head = ChainHead(tenant, linked.sequence_number, linked.record_hash)
    assert linked_head == reference
    assert linked_head.last_sequence == 5


def test_a_nul_in_an_event_cannot_move_a_link() -> None:
    """Validation never lets a NUL through; were one to get here, it is content like any
    other: the parts are joined around the links, never split at a placeholder."""
    wire = next(iter(sample_events(["tenant-a"], 1, now=NOW - timedelta(minutes=1))))
    event = parse_event(None, json.dumps(wire).encode(), LIMITS, NOW)
    forged = {**event, "actor_id": "mallory\x00", "context": {"\x00": "\x00"}}
    _assert_same_as_reference(forged, ChainHead("tenant-a", 4, "ab" * 32), NOW, ("t", 0, 0))


def test_link_refuses_an_empty_head() -> None:
    wire = next(iter(sample_events(["tenant-a"], 1, now=NOW - timedelta(minutes=1))))
    event = parse_event(None, json.dumps(wire).encode(), LIMITS, NOW)
    with pytest.raises(ValueError, match="no genesis record"):
        link(render(event, "t", 0, 0), ChainHead.empty("tenant-a"), format_timestamp(NOW))
