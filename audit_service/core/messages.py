"""The broker-independent shape of a consumed Kafka message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple


class ConsumedMessage(NamedTuple):
    """A Kafka message as the pipeline needs it, independent of the client library (a
    NamedTuple: batches of them are pickled to the validation worker)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None

    @property
    def kafka_timestamp(self) -> datetime | None:
        if self.timestamp_ms is None or self.timestamp_ms < 0:
            return None
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)
