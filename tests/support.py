"""Helpers shared by the integration and acceptance tests (not fixtures: plain functions)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Producer
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from audit_service.config import Settings
from audit_service.daemon import Daemon, RunLimits, RunTotals, StopSignal
from audit_service.models import AuditRejectedEvent
from audit_service.reader import AuditReader

DAEMON_TIMEOUT_S = 90.0


def wire_event(tenant_id: str, **fields: Any) -> dict[str, Any]:
    """A valid wire-format event with a fresh audit_id; `fields` override or add."""
    event: dict[str, Any] = {
        "audit_id": str(uuid.uuid4()),
        "tenant_id": tenant_id,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event_type": "alert.classified",
        "actor_type": "agent",
        "actor_id": "triage-agent",
        "source_service": "tests",
    }
    event.update(fields)
    return event


def encode(event: dict[str, Any], key: str | None = None) -> tuple[bytes | None, bytes]:
    """(key, value) bytes for an event; the key defaults to its tenant."""
    message_key = event["tenant_id"] if key is None else key
    return message_key.encode(), json.dumps(event).encode()


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]],
            partition: int | None = None) -> int:
    """Publish raw messages with confluent-kafka (a client independent of the service's)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "message.max.bytes": 10_000_000})
    failures: list[str] = []

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    count = 0
    for key, value in messages:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
        producer.poll(0)
        count += 1
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not failures, failures
    return count


def produce_events(bootstrap: str, topic: str, events: Iterable[dict[str, Any]]) -> int:
    return produce(bootstrap, topic, (encode(event) for event in events))


def run_until_idle(settings: Settings, timeout_s: float = DAEMON_TIMEOUT_S) -> RunTotals:
    """Run the real daemon in-process until it has consumed everything, bounded in time."""
    stop = StopSignal()
    timer = threading.Timer(timeout_s, stop.event.set)
    timer.start()
    try:
        totals = Daemon(settings, stop).run(RunLimits(exit_when_idle=True))
    finally:
        timer.cancel()
    assert not stop.event.is_set(), f"daemon did not go idle within {timeout_s}s"
    return totals


def chain_of(database_url: str, tenant_id: str) -> list[dict[str, Any]]:
    """A tenant's records as hashed dicts, in sequence order, read back from PostgreSQL."""
    engine = create_engine(database_url)
    try:
        return list(AuditReader(engine).iter_records(tenant_id))
    finally:
        engine.dispose()


def rejections(database_url: str) -> list[AuditRejectedEvent]:
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            rows = session.scalars(select(AuditRejectedEvent).order_by(AuditRejectedEvent.id))
            result = list(rows)
            session.expunge_all()
            return result
    finally:
        engine.dispose()


def scalar(database_url: str, sql: str, **params: Any) -> Any:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()
    finally:
        engine.dispose()
