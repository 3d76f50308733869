"""Hypothesis strategies for valid wire events, shared by the property tests.

"Valid" means what `events.parse_event` accepts: tricky numbers, astral-plane text, optional
fields present or absent.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from audit_service.core.taxonomy import EVENT_CATEGORIES, RESERVED_EVENT_TYPES

TENANT_ALPHABET = string.ascii_letters + string.digits + "._:-"

short_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
                     max_size=12)
json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | short_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
    max_leaves=8,
)
# Prefixed keys never collide with the type-checked known fields of context/decision/outcome.
free_objects = st.dictionaries(short_text.map(lambda key: "x-" + key), json_values, max_size=3)
zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                         timezone(timedelta(hours=-8))])


@st.composite
def wire_timestamps(draw: st.DrawFn) -> str:
    """RFC 3339 as producers send it: Z or an offset, milliseconds or microseconds."""
    moment = draw(st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2026, 11, 25),
                               timezones=zones))
    text = moment.isoformat(timespec=draw(st.sampled_from(["milliseconds", "microseconds"])))
    return text.replace("+00:00", "Z") if draw(st.booleans()) else text


@st.composite
def wire_events(draw: st.DrawFn, tenant_id: str) -> dict[str, Any]:
    """A valid wire event, optional fields present or absent."""
    required = {
        "audit_id": str(draw(st.uuids())),
        "tenant_id": tenant_id,
        "timestamp": draw(wire_timestamps()),
        "event_type": draw(st.sampled_from(
            sorted(set(EVENT_CATEGORIES) - set(RESERVED_EVENT_TYPES)))),
        "actor_type": draw(st.sampled_from(["agent", "human", "system", "scheduler"])),
        "actor_id": draw(short_text.filter(bool)),
    }
    optional = draw(st.fixed_dictionaries({}, optional={
        "severity": st.sampled_from(["info", "warning", "critical"]),
        "actor_permissions": st.lists(short_text, max_size=3),
        "investigation_id": short_text,
        "alert_id": short_text,
        "entity_ids": st.lists(short_text, max_size=3),
        "context": free_objects,
        "decision": free_objects,
        "outcome": free_objects,
        "source_service": short_text,
        "record_version": short_text.filter(bool),
    }))
    return {**required, **optional}
