"""The only module that imports kafka-python: subscribe, poll, seek, commit.

Offsets live in the database (see `store.ChainStore.save_offsets`); on every partition
assignment the consumer seeks to them, so the Kafka-side commit is a convenience for
tooling that reads group offsets, never the source of truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from audit_service.batch import ConsumedMessage
from audit_service.config import Settings
from audit_service.errors import ConnectionFailure, TransientError

log = logging.getLogger(__name__)

StoredOffsets = Callable[[Sequence[int]], dict[int, int]]
"""Looks up the next offset per partition in the database (partition -> offset)."""


class _SeekToStoredOffsets(ConsumerRebalanceListener):
    """On assignment, position each partition where the database says we stopped."""

    def __init__(self, consumer: KafkaConsumer, stored_offsets: StoredOffsets):
        self._consumer = consumer
        self._stored_offsets = stored_offsets

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            log.info("partitions revoked",
                     extra={"partitions": sorted(tp.partition for tp in revoked)})

    def on_partitions_assigned(self, assigned: Any) -> None:
        partitions = sorted(tp.partition for tp in assigned)
        stored = self._stored_offsets(partitions)
        for tp in assigned:
            if tp.partition in stored:
                self._consumer.seek(tp, stored[tp.partition])
        log.info("partitions assigned", extra={"partitions": partitions, "seek_to": stored})


def topic_partitions(settings: Settings, timeout_ms: int) -> list[int]:
    """The configured topic's partitions (empty if it does not exist), for check-config.

    A short-lived client that joins no group and never auto-creates the topic.
    """
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


class AuditConsumer:
    """A consumer-group member for the audit topic with auto-commit off."""

    def __init__(self, settings: Settings, stored_offsets: StoredOffsets):
        self.topic = settings.kafka_topic
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
                group_id=settings.consumer_group,
                client_id="audit-service",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=settings.batch_size,
                session_timeout_ms=settings.kafka_session_timeout_ms,
                heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
                max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
                fetch_max_bytes=max(52_428_800, settings.max_event_bytes * 2),
                max_partition_fetch_bytes=max(1_048_576, settings.max_event_bytes * 2),
            )
        except KafkaError as exc:
            raise ConnectionFailure(
                f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}"
            ) from exc
        self._consumer.subscribe(
            [self.topic], listener=_SeekToStoredOffsets(self._consumer, stored_offsets)
        )

    def poll(self, timeout_ms: int, max_records: int) -> list[ConsumedMessage]:
        """Up to `max_records` messages, in offset order within each partition."""
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise TransientError(f"polling Kafka: {exc}") from exc
        messages: list[ConsumedMessage] = []
        for tp in sorted(polled, key=lambda tp: tp.partition):
            messages.extend(
                ConsumedMessage(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                for r in polled[tp]
            )
        return messages

    def commit(self, next_offsets: dict[int, int]) -> bool:
        """Best-effort Kafka commit after the database commit; False (logged) on failure."""
        offsets = {
            TopicPartition(self.topic, partition): OffsetAndMetadata(offset, "", -1)
            for partition, offset in next_offsets.items()
        }
        try:
            self._consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("Kafka offset commit failed; the database keeps the offsets",
                        extra={"error": str(exc)})
            return False
        return True

    def rewind(self, messages: Sequence[ConsumedMessage]) -> None:
        """Seek back to the first of `messages` per partition, so none is skipped."""
        first: dict[int, int] = {}
        for message in messages:
            first.setdefault(message.partition, message.offset)
        for partition, offset in first.items():
            self._consumer.seek(TopicPartition(self.topic, partition), offset)

    def assigned_partitions(self) -> list[int]:
        return sorted(tp.partition for tp in self._consumer.assignment())

    def lag(self) -> dict[int, int]:
        """Messages between position and high watermark per assigned partition, where known.

        Uses only what the last fetch responses reported (timeout 0), so it never blocks.
        """
        lag: dict[int, int] = {}
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            position = self._consumer.position(tp, timeout_ms=0)
            if highwater is not None and position is not None:
                lag[tp.partition] = max(0, highwater - position)
        return lag

    def caught_up(self) -> bool:
        """True when every assigned partition is consumed up to its high watermark."""
        assignment = self._consumer.assignment()
        if not assignment:
            return False
        for tp in assignment:
            highwater = self._consumer.highwater(tp)
            if highwater is None or self._consumer.position(tp) < highwater:
                return False
        return True

    def pause(self) -> None:
        """Stop fetching (while a batch is retried) but keep the group membership alive."""
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._consumer.resume(*self._consumer.paused())

    def close(self) -> None:
        """Leave the group promptly so partitions move to another instance at once."""
        try:
            self._consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("error while leaving the consumer group", extra={"error": str(exc)})
