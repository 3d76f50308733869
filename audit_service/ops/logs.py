"""Logging setup: one line per event, carrying the structured fields of the log call.

A log call passes its facts as `extra=` fields (tenant_id, audit_id, partition, offset,
...), never inside the message, so they survive both formats: JSON, one object per line,
for journald and log shippers (the default when stderr is not a terminal), and key=value
text for a person at a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

LOG_FORMATS = ("auto", "json", "text")
"""`auto` is JSON unless the log stream is a terminal."""

_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
    }


def _jsonable(value: Any) -> Any:
    """Sets become sorted lists; anything else JSON lacks is logged as its str()."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


class KeyValueFormatter(logging.Formatter):
    """Appends the `extra=` fields of a log call (tenant, partition, offset...) to the line."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _extra_fields(record)
        if fields:
            line += " " + " ".join(f"{key}={value!r}" for key, value in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the `extra=` fields.

    A traceback goes into the `exception` field, escaped, so it never spans lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=_jsonable)


def configure_logging(level: str, log_format: str = "auto", stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr by default; journald captures it under systemd)."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if log_format == "json" or (log_format == "auto" and not stream.isatty()):
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for noisy in ("kafka", "alembic"):
        logging.getLogger(noisy).setLevel(quiet)
