"""Logging setup: one line per event, structured fields rendered as key=value."""

from __future__ import annotations

import logging
import sys

_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """Appends the `extra=` fields of a log call (tenant, partition, offset...) to the line."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {
            key: value for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
        }
        if fields:
            line += " " + " ".join(f"{key}={value!r}" for key, value in fields.items())
        return line


def configure_logging(level: str) -> None:
    """Log to stderr (journald captures it under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for noisy in ("kafka", "alembic"):
        logging.getLogger(noisy).setLevel(quiet)
