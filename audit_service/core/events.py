"""Turn one Kafka message (raw key and value bytes) into a validated event, or a reason.

Pure: no I/O. Every way a message can be unacceptable ends in `EventRejected` with a
human-readable reason; the caller quarantines the raw bytes with that reason.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

from pydantic import ValidationError

from audit_service.core.chain import (
    TimestampError,
    format_timestamp,
    parse_timestamp,
    stable_number,
)
from audit_service.core.event_schema import NESTED_SCHEMAS, WireEvent
from audit_service.core.event_shape import well_formed
from audit_service.core.taxonomy import EVENT_CATEGORIES, RESERVED_EVENT_TYPES

EARLIEST_EVENT_TIME: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""Events claiming to be older than this are from a broken clock, not from this platform."""

MAX_NESTING_DEPTH: Final = 64
"""Deeper JSON is rejected: no real audit event needs it and it endangers every consumer."""

_RENDERED_TIMESTAMP: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
)
"""`chain.format_timestamp`'s output shape: a valid date in it renders back to itself."""
_MAX_REASON_ERRORS: Final = 3
_MAX_LOCATION_CHARS: Final = 128

REJECTION_KINDS: Final = (
    "tombstone", "oversized", "encoding", "json", "not_object", "nul", "schema",
    "key_mismatch", "reserved_type", "taxonomy", "timestamp",
)


class EventRejected(ValueError):
    """The message cannot be chained; `reason` says why in one line, `kind` classifies it
    (one of REJECTION_KINDS, a bounded set suitable for metrics labels)."""

    def __init__(
        self, reason: str, tenant_id: str | None = None, audit_id: str | None = None, *,
        kind: str,
    ):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.tenant_id = tenant_id
        self.audit_id = audit_id

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with `kind` (validation runs in a worker process, see ingest.validation_pool)."""
        return (partial(EventRejected, kind=self.kind),
                (self.reason, self.tenant_id, self.audit_id))


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """The configurable bounds a message must respect."""

    max_event_bytes: int = 1_048_576
    max_clock_skew: timedelta = timedelta(days=1)


def _reject_constant(name: str) -> Any:
    raise EventRejected(f"value contains {name}, which is not valid JSON", kind="json")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise EventRejected(f"value has duplicate JSON key {key[:64]!r}", kind="json")
            seen.add(key)
    return obj


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise EventRejected(f"NUL character in {where}", kind="nul")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise EventRejected(f"unpaired UTF-16 surrogate in {where}", kind="encoding") from None


def _parse_float(text: str) -> float | int:
    """Parse a JSON float literal: finite only, and already in its JSONB-stable form."""
    value = float(text)
    if not math.isfinite(value):
        raise EventRejected(
            f"number {text[:32]} is out of range (only finite numbers are JSON)", kind="json"
        )
    return stable_number(value)


def _may_hide_problems(text: str) -> bool:
    """Cheap test on the raw JSON text: False means no NUL, no lone surrogate and no deep
    nesting can be in it (those need a \\u escape or many brackets), so the tree walk can
    be skipped."""
    return "\\u" in text or text.count("{") + text.count("[") > MAX_NESTING_DEPTH


_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_parse_float, object_pairs_hook=_unique_object
)
"""Strict JSON: no NaN/Infinity, no duplicate keys, finite JSONB-stable floats."""


def _check_tree(value: Any, where: str, depth: int = 0) -> None:
    """Reject NULs, lone surrogates and excessive depth anywhere in a parsed JSON value."""
    if depth > MAX_NESTING_DEPTH:
        raise EventRejected(f"JSON nested deeper than {MAX_NESTING_DEPTH} levels", kind="json")
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"a key of {where}")
            _check_tree(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, where, depth + 1)


def _decode_json(value: bytes) -> tuple[str, Any]:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventRejected(
            f"value is not valid UTF-8 (byte {exc.start})", kind="encoding"
        ) from None
    try:
        document = _DECODER.decode(text)
    except RecursionError:
        raise EventRejected(
            f"JSON nested deeper than {MAX_NESTING_DEPTH} levels", kind="json"
        ) from None
    except json.JSONDecodeError as exc:
        raise EventRejected(
            f"value is not valid JSON: {exc.msg} at char {exc.pos}", kind="json"
        ) from None
    except ValueError as exc:
        if isinstance(exc, EventRejected):
            raise
        raise EventRejected(f"value is not acceptable JSON: {exc}", kind="json") from None
    return text, document


def _describe_errors(prefix: str, exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:_MAX_REASON_ERRORS]:
        location = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
        # An unknown key is producer data: bound it and escape what would break the line.
        location = location[:_MAX_LOCATION_CHARS]
        if not location.isprintable():
            location = repr(location)
        parts.append(f"{location or 'event'}: {error['msg']}")
    more = exc.error_count() - _MAX_REASON_ERRORS
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def validate_schema(document: dict[str, Any]) -> dict[str, Any]:
    """The full pydantic schema: the validated fields with defaults filled in (event_category
    None when absent), or EventRejected worded from pydantic's errors. `parse_event` asks
    `event_shape.well_formed` first and comes here when it is not sure."""
    tenant = document.get("tenant_id") if isinstance(document.get("tenant_id"), str) else None
    audit_id = document.get("audit_id") if isinstance(document.get("audit_id"), str) else None
    try:
        wire = WireEvent.model_validate(document)
    except ValidationError as exc:
        raise EventRejected(
            "schema violation: " + _describe_errors("", exc), tenant, audit_id, kind="schema"
        ) from None
    for name, schema in NESTED_SCHEMAS.items():
        try:
            schema.validate_python(getattr(wire, name))
        except ValidationError as exc:
            raise EventRejected(
                "schema violation: " + _describe_errors(name, exc), wire.tenant_id,
                wire.audit_id, kind="schema",
            ) from None
    return dict(wire.__dict__)  # the validated fields; model_dump() would deep-copy them


def _check_semantics(event: dict[str, Any], key: str | None) -> str:
    """Cross-field rules; returns the event_category to record."""
    tenant, event_type, sent_category = (
        event["tenant_id"], event["event_type"], event["event_category"]
    )

    def reject(reason: str, kind: str) -> EventRejected:
        return EventRejected(reason, tenant, event["audit_id"], kind=kind)

    if key is not None and key != tenant:
        raise reject(
            f"message key {key[:140]!r} does not match tenant_id {tenant!r}", "key_mismatch",
        )
    if event_type in RESERVED_EVENT_TYPES:
        raise reject(
            f"event_type {event_type!r} is reserved for the audit-service", "reserved_type"
        )
    category = EVENT_CATEGORIES.get(event_type)
    if category is None:
        raise reject(f"unknown event_type {event_type[:128]!r}", "taxonomy")
    if sent_category is not None and sent_category != category:
        raise reject(
            f"event_category {sent_category[:64]!r} does not match "
            f"{event_type!r} (expected {category!r})",
            "taxonomy",
        )
    return category


def event_time(text: str) -> tuple[datetime, str]:
    """The moment of an RFC 3339 timestamp and its hashed rendering. Most producers send
    the hashed form already; such a text is parsed once and kept, not re-rendered."""
    if _RENDERED_TIMESTAMP.fullmatch(text):
        try:
            return datetime.fromisoformat(text), text
        except ValueError:
            pass  # e.g. February 30th: parse_timestamp words the error
    moment = parse_timestamp(text)
    return moment, format_timestamp(moment)


def parse_event(
    key: bytes | None, value: bytes | None, limits: ValidationLimits, now: datetime
) -> dict[str, Any]:
    """Validate one message; return the event's fields with defaults filled in.

    The result has exactly `chain.EVENT_FIELDS`: timestamps rendered in the hashed form,
    numbers in their JSONB-stable form (`chain.jsonb_stable`, applied while parsing),
    audit_id in canonical UUID form.
    Raises EventRejected with the reason for anything that must be quarantined.
    """
    if value is None:
        raise EventRejected("message has no value (a tombstone)", kind="tombstone")
    if len(value) > limits.max_event_bytes:
        raise EventRejected(
            f"value is {len(value)} bytes, above the limit of {limits.max_event_bytes}",
            kind="oversized",
        )
    key_text = None
    if key is not None:
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError:
            raise EventRejected("message key is not valid UTF-8", kind="encoding") from None
    text, document = _decode_json(value)
    if not isinstance(document, dict):
        raise EventRejected(
            f"value is a JSON {type(document).__name__}, expected an object", kind="not_object"
        )
    if _may_hide_problems(text):
        _check_tree(document, "event")
    event = well_formed(document)
    if event is None:
        event = validate_schema(document)
    event["event_category"] = _check_semantics(event, key_text)
    sent = event["timestamp"]
    try:
        moment, event["timestamp"] = event_time(sent)
    except TimestampError as exc:
        raise EventRejected(
            f"timestamp: {exc}", event["tenant_id"], event["audit_id"], kind="timestamp"
        ) from None
    if moment < EARLIEST_EVENT_TIME or moment > now + limits.max_clock_skew:
        raise EventRejected(
            f"timestamp {sent[:64]!r} is outside the accepted window "
            f"({EARLIEST_EVENT_TIME:%Y-%m-%d} .. now + {limits.max_clock_skew})",
            event["tenant_id"], event["audit_id"], kind="timestamp",
        )
    return event
