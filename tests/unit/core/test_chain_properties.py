"""Property-based tests of the chain: what any valid input chains to, and that any single
tampering with a chained record list is detected.

Events are generated on the wire (JSON bytes) and validated by `events.parse_event`, so
"valid" means what the daemon accepts, including tricky numbers and astral-plane text.
Verification is given the head the writer recorded, as `verify` is, so a cut-off tail
counts as tampering too.
"""

from __future__ import annotations

import contextlib
import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import TENANT_ALPHABET, json_values, wire_events

from audit_service.core.chain import (
    HASHED_FIELDS,
    ChainHead,
    advance,
    chain_event,
    compute_record_hash,
    genesis_record,
    verify_chain,
)
from audit_service.core.events import ValidationLimits, parse_event

NOW = datetime(2026, 11, 26, 16, 0, tzinfo=UTC)
LIMITS = ValidationLimits()
EXAMPLES = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def chains(draw: st.DrawFn, min_events: int = 0) -> tuple[list[dict[str, Any]], ChainHead]:
    """Records as the writer chains them (genesis first), and the head it records."""
    tenant = draw(st.text(TENANT_ALPHABET, min_size=1, max_size=16))
    events = draw(st.lists(wire_events(tenant), min_size=min_events, max_size=8))
    records = [genesis_record(tenant, NOW)]
    head = advance(ChainHead.empty(tenant), records[0])
    for index, wire in enumerate(events):
        event = parse_event(tenant.encode(), json.dumps(wire).encode(), LIMITS, NOW)
        record = chain_event(head, event, NOW + timedelta(microseconds=index))
        records.append(record)
        head = advance(head, record)
    return records, head


def _detected(records: list[dict[str, Any]], head: ChainHead) -> bool:
    return not verify_chain(head.tenant_id, records, expected_head=head).valid


@EXAMPLES
@given(chains())
def test_any_sequence_of_valid_events_chains_and_verifies(
    chain: tuple[list[dict[str, Any]], ChainHead],
) -> None:
    records, head = chain
    result = verify_chain(head.tenant_id, records, expected_head=head)
    assert result.valid, result.first_break
    assert result.records_checked == len(records) == head.last_sequence + 1
    # What an export carries (JSON text) verifies the same.
    exported = [json.loads(json.dumps(record)) for record in records]
    assert verify_chain(head.tenant_id, exported, expected_head=head).valid


@EXAMPLES
@given(chains(min_events=1), st.data())
def test_changing_any_field_of_any_record_is_detected(
    chain: tuple[list[dict[str, Any]], ChainHead], data: st.DataObject,
) -> None:
    records, head = chain
    index = data.draw(st.integers(0, len(records) - 1), label="record")
    field = data.draw(st.sampled_from([*HASHED_FIELDS, "record_hash"]), label="field")
    original = records[index][field]
    replacement = data.draw(
        (json_values | st.just(f"{original}x")).filter(
            lambda value: json.dumps(value) != json.dumps(original)),
        label="replacement")
    rehash = data.draw(st.booleans(), label="attacker recomputes record_hash")
    tampered = copy.deepcopy(records)
    tampered[index][field] = replacement
    if rehash and field != "record_hash":
        # A value JSON cannot encode is reported as malformed either way.
        with contextlib.suppress(TypeError, ValueError):
            tampered[index]["record_hash"] = compute_record_hash(tampered[index])
    assert _detected(tampered, head)


@EXAMPLES
@given(chains(min_events=1), st.data())
def test_deleting_any_record_is_detected(
    chain: tuple[list[dict[str, Any]], ChainHead], data: st.DataObject,
) -> None:
    records, head = chain
    index = data.draw(st.integers(0, len(records) - 1), label="deleted")
    assert _detected(records[:index] + records[index + 1:], head)


@EXAMPLES
@given(chains(), st.data())
def test_inserting_a_record_anywhere_is_detected(
    chain: tuple[list[dict[str, Any]], ChainHead], data: st.DataObject,
) -> None:
    records, head = chain
    position = data.draw(st.integers(0, len(records)), label="position")
    how = data.draw(st.sampled_from(["copy", "forged link"]), label="how")
    if how == "copy" or position == 0:
        forged = copy.deepcopy(records[data.draw(st.integers(0, len(records) - 1))])
    else:
        # A well-formed record linked to its predecessor, hash recomputed by the forger.
        predecessor = records[position - 1]
        wire = data.draw(wire_events(head.tenant_id), label="forged event")
        event = parse_event(None, json.dumps(wire).encode(), LIMITS, NOW)
        forged = chain_event(
            ChainHead(head.tenant_id, predecessor["sequence_number"], predecessor["record_hash"]),
            event, NOW)
    assert _detected([*records[:position], forged, *records[position:]], head)


@EXAMPLES
@given(chains(min_events=1), st.data())
def test_swapping_two_records_is_detected(
    chain: tuple[list[dict[str, Any]], ChainHead], data: st.DataObject,
) -> None:
    records, head = chain
    first = data.draw(st.integers(0, len(records) - 2), label="first")
    second = data.draw(st.integers(first + 1, len(records) - 1), label="second")
    swapped = list(records)
    swapped[first], swapped[second] = swapped[second], swapped[first]
    assert _detected(swapped, head)


@EXAMPLES
@given(chains(), st.data())
def test_truncating_the_chain_is_detected_when_the_head_is_known(
    chain: tuple[list[dict[str, Any]], ChainHead], data: st.DataObject,
) -> None:
    records, head = chain
    kept = data.draw(st.integers(0, len(records) - 1), label="records kept")
    truncated = records[:kept]
    assert _detected(truncated, head)
    # Without the head, a prefix is indistinguishable from a shorter chain: that is why
    # the writer records heads and exports print the last hash.
    assert verify_chain(head.tenant_id, truncated).valid


@EXAMPLES
@given(chains(min_events=1), st.data())
def test_rewriting_history_from_any_record_on_is_detected_when_the_head_is_known(
    chain: tuple[list[dict[str, Any]], ChainHead], data: st.DataObject,
) -> None:
    records, head = chain
    start = data.draw(st.integers(1, len(records) - 1), label="first rewritten")
    rewritten = copy.deepcopy(records[:start])
    forged_head = ChainHead(head.tenant_id, start - 1, records[start - 1]["record_hash"])
    for record in records[start:]:
        event = {**record, "actor_id": record["actor_id"] + "-forged"}
        forged = chain_event(forged_head, event, NOW)
        rewritten.append(forged)
        forged_head = advance(forged_head, forged)
    assert verify_chain(head.tenant_id, rewritten).valid  # internally consistent ...
    assert _detected(rewritten, head)  # ... but not the head the writer recorded
