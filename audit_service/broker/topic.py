"""Short-lived Kafka clients that join no group: topic metadata, high watermarks, topic
creation and a producer.

`check-config`, `status` and the dev stack use these; none of them commits an offset or
auto-creates a topic, so they can never disturb the daemon's consumer group.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAlreadyExistsError

from audit_service.config import Settings
from audit_service.core.errors import ConnectionFailure

POLL_MS: Final = 100
"""How long one poll waits while reading high watermarks."""
ADMIN_REQUEST_TIMEOUT_MS: Final = 5000
TOPIC_POLL_INTERVAL_S: Final = 0.1
"""Pause between metadata checks while a new topic's partitions get leaders."""
PRODUCER_CLOSE_TIMEOUT_S: Final = 10


def topic_partitions(settings: Settings, timeout_ms: int) -> list[int]:
    """The configured topic's partitions (empty if it does not exist), for check-config."""
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            client_id="audit-service-check", allow_auto_create_topics=False,
            bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms,
        )
    except KafkaError as exc:
        raise ConnectionFailure(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}"
        ) from exc
    try:
        return sorted(consumer.partitions_for_topic(settings.kafka_topic) or [])
    except KafkaError as exc:
        raise ConnectionFailure(f"cannot read Kafka metadata: {exc}") from exc
    finally:
        consumer.close()


def high_watermarks(bootstrap_servers: str, topic: str, timeout_ms: int) -> dict[int, int]:
    """Each partition's true end offset, read from fetch responses.

    `end_offsets()` (ListOffsets) is not enough: Tansu can answer the start of the last
    record batch instead of the end. Every fetch response carries the high watermark, so
    assign all partitions, seek to that (possibly short) end and poll until each partition
    has reported one.
    """
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers.split(","), client_id="audit-service-status",
            enable_auto_commit=False, allow_auto_create_topics=False,
            bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms,
        )
    except KafkaError as exc:
        raise ConnectionFailure(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ConnectionFailure(f"topic {topic!r} does not exist on {bootstrap_servers}")
        assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_end()
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            consumer.poll(timeout_ms=POLL_MS)
            marks = {tp.partition: consumer.highwater(tp) for tp in assigned}
            known = {partition: mark for partition, mark in marks.items() if mark is not None}
            if len(known) == len(marks):
                return known
            if time.monotonic() > deadline:
                missing = sorted(set(marks) - set(known))
                raise ConnectionFailure(f"no high watermark for partitions {missing} in time")
    except KafkaError as exc:
        raise ConnectionFailure(f"reading high watermarks from Kafka: {exc}") from exc
    finally:
        consumer.close()


def list_topics(bootstrap: str, timeout_ms: int) -> list[str]:
    """One metadata round trip: proves a broker answers the Kafka protocol."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
        try:
            return list(admin.list_topics())
        finally:
            admin.close()
    except KafkaError as exc:
        raise ConnectionFailure(f"broker {bootstrap} does not answer: {exc}") from exc


def create_topic(bootstrap: str, topic: str, partitions: int = 4, timeout_s: float = 30.0) -> None:
    """Create `topic` (no error if it exists) and wait until all partitions have a leader.

    Uses the dict form of create_topics(): kafka-python 3 deprecates NewTopic.
    """
    deadline = time.monotonic() + timeout_s
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=ADMIN_REQUEST_TIMEOUT_MS,
            bootstrap_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as exc:
        raise ConnectionFailure(f"cannot reach broker {bootstrap}: {exc}") from exc
    try:
        try:
            admin.create_topics(
                {topic: {"num_partitions": partitions, "replication_factor": 1}},
                timeout_ms=ADMIN_REQUEST_TIMEOUT_MS,
            )
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            raise ConnectionFailure(
                f"cannot create topic {topic!r} on {bootstrap}: {exc}"
            ) from exc
        state = "not yet described"
        while time.monotonic() < deadline:
            try:
                described = admin.describe_topics([topic])
            except KafkaError as exc:
                state = f"describe failed: {exc}"
            else:
                state = _topic_state(described, partitions)
                if state == "ready":
                    return
            time.sleep(TOPIC_POLL_INTERVAL_S)
        raise ConnectionFailure(
            f"topic {topic!r} on {bootstrap} not ready after {timeout_s:.0f}s: {state}"
        )
    finally:
        admin.close()


def _topic_state(described: list[dict[str, Any]], partitions: int) -> str:
    """'ready' when the metadata shows `partitions` partitions, each with a leader."""
    if not described or described[0].get("error_code", 0) != 0:
        return "missing from metadata"
    found = described[0].get("partitions") or []
    led = [p for p in found if p.get("error_code", 0) == 0 and p.get("leader_id", -1) >= 0]
    if len(led) < partitions:
        return f"{len(led)} of {partitions} partitions have a leader"
    return "ready"


def produce_messages(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]
) -> int:
    """Send raw (key, value) messages, wait until all are acknowledged; return the count.

    Raw bytes so tests and the dev stack can also send deliberately malformed input.
    Raises the first delivery error (a kafka-python KafkaError) if any message failed.
    """
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    errors: list[BaseException] = []
    count = 0
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value).add_errback(errors.append)
            count += 1
        producer.flush()
    finally:
        producer.close(timeout=PRODUCER_CLOSE_TIMEOUT_S)
    if errors:
        raise errors[0]
    return count
