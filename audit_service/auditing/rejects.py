"""`audit-service rejects`: browse quarantined messages without trusting their bytes.

Raw keys and values are whatever a producer sent: invalid UTF-8, terminal escape
sequences, bidi overrides. They are never written to a terminal as they are; `safe_text`
escapes everything that is not plainly printable, so what you see is what is stored.
"""

from __future__ import annotations

import base64
from typing import Any, Final

from audit_service.storage.reader import RejectedEvent

REASON_CHARS_IN_LIST: Final = 80
_NAMED_ESCAPES: Final = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if char.isprintable():
        return char
    if code < 0x80:  # \\x80-\\xff are reserved for bytes that are not UTF-8
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_text(text: str) -> str:
    """`text` with every non-printable character escaped (\\n, \\xNN, \\uNNNN; a backslash
    doubled), so a terminal shows it but never obeys it."""
    return "".join(_escape(char) for char in text)


def safe_text(data: bytes) -> str:
    """Raw bytes as escaped UTF-8 text; bytes that are not UTF-8 show as \\xNN."""
    return escape_text(data.decode("utf-8", errors="surrogateescape"))


def _coordinates(event: RejectedEvent) -> str:
    return f"{event.topic}[{event.partition}]@{event.offset}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_list(events: list[RejectedEvent]) -> str:
    """One line per rejected message, newest first."""
    if not events:
        return "no rejected events"
    rows = [
        [str(e.id), e.rejected_at.strftime("%Y-%m-%d %H:%M:%SZ"), _coordinates(e),
         escape_text(e.tenant_id or "-"), str(e.value_size or 0),
         _shorten(escape_text(e.reason), REASON_CHARS_IN_LIST)]
        for e in events
    ]
    headers = ["ID", "REJECTED AT", "TOPIC[PARTITION]@OFFSET", "TENANT", "BYTES", "REASON"]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in [headers, *rows]
    )


def _bytes_line(name: str, data: bytes | None) -> str:
    if data is None:
        return f"{name}: (none)"
    return f"{name} ({len(data)} bytes): {safe_text(data)}"


def render_event(event: RejectedEvent) -> str:
    """Every stored fact about one rejected message, raw bytes escaped."""
    return "\n".join([
        f"id: {event.id}",
        f"rejected at: {event.rejected_at.isoformat()}",
        f"reason: {escape_text(event.reason)}",
        f"coordinates: {escape_text(_coordinates(event))} "
        f"(consumer group {escape_text(event.consumer_group)})",
        f"kafka timestamp: {event.kafka_timestamp.isoformat() if event.kafka_timestamp else '-'}",
        f"tenant_id (from the payload): {escape_text(event.tenant_id or '-')}",
        f"audit_id (from the payload): {escape_text(event.audit_id or '-')}",
        _bytes_line("key", event.raw_key),
        _bytes_line("value", event.raw_value),
    ])


def _base64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def event_json(event: RejectedEvent, with_bytes: bool) -> dict[str, Any]:
    """The JSON form; raw bytes as base64 (exact) when `with_bytes`."""
    document: dict[str, Any] = {
        "id": event.id, "rejected_at": event.rejected_at.isoformat(), "reason": event.reason,
        "consumer_group": event.consumer_group, "topic": event.topic,
        "partition": event.partition, "offset": event.offset,
        "kafka_timestamp": event.kafka_timestamp.isoformat() if event.kafka_timestamp else None,
        "tenant_id": event.tenant_id, "audit_id": event.audit_id,
        "value_bytes": event.value_size,
    }
    if with_bytes:
        document["raw_key_base64"] = _base64(event.raw_key)
        document["raw_value_base64"] = _base64(event.raw_value)
    return document
