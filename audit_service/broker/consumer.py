"""The daemon's consumer: subscribe (or assign), poll, position, commit.

Offsets live in the database (see `storage.store.ChainStore.save_offsets`), so it never
chooses a position itself (`auto_offset_reset='none'`). A partition it gains (a group
assignment, the manual `kafka_partitions` list) or whose position the broker no longer
holds is *held*: paused until the daemon `place()`s it where the database says, after
checking that offset against `log_ranges()` (see core.offset_policy). So no offset is skipped
or reset without the daemon deciding and logging it. The Kafka-side commit only keeps
tooling that reads group offsets informed; it is never the source of truth.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, OffsetOutOfRangeError
from kafka.structs import OffsetAndMetadata

from audit_service.broker.topic import (
    FETCH_MAX_WAIT_MS,
    PROBE_TIMEOUT_MS,
    log_ranges,
    open_consumer,
)
from audit_service.config import Settings
from audit_service.core.errors import TransientError
from audit_service.core.messages import ConsumedMessage
from audit_service.core.offset_policy import TopicLog

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_MS = 5_000
"""Bound on the best-effort Kafka commit, so a broker outage cannot stall the loop."""
BEHIND_POSITION_GRACE_S = 1.0
"""How long a high watermark may stay below our position before the partition is held.

A high watermark is only as fresh as the last fetch response; right after a seek it can
be an older one. A real loss persists, and log_ranges() then measures it afresh."""


class _HoldAssigned(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python is untyped
    """Holds every assigned partition until the daemon places it.

    No database or network work here: kafka-python runs listeners on its IO thread, and a
    failure inside one would leave the position to the client.
    """

    def __init__(self, owner: AuditConsumer):
        self._owner = owner

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            partitions = sorted(tp.partition for tp in revoked)
            self._owner._release(partitions)
            log.info("partitions revoked", extra={"partitions": partitions})

    def on_partitions_assigned(self, assigned: Any) -> None:
        partitions = sorted(tp.partition for tp in assigned)
        self._owner._hold(partitions, reason="assigned", new=True)
        log.info("partitions assigned", extra={"partitions": partitions})


def _topic_id(client: KafkaConsumer, topic: str) -> str | None:
    """The topic's id in the client's metadata (KIP-516), None when unknown. kafka-python
    keeps it on the cluster metadata and has no public accessor."""
    cluster = getattr(client, "_cluster", None)
    topic_id = cluster.topic_id(topic) if cluster is not None else None
    return str(topic_id) if topic_id else None


class AuditConsumer:
    """A consumer of the audit topic with auto-commit off: a group member, or (with
    `kafka_partitions`) a client of fixed partitions that joins no group."""

    def __init__(self, settings: Settings):
        self.topic = settings.kafka_topic
        self._bootstrap = settings.kafka_bootstrap_servers.split(",")
        # Listeners run on kafka-python's IO thread: the held partitions are shared state.
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}  # partition -> token; each hold gets a new token
        self._tokens = 0
        self._behind_since: dict[int, float] = {}
        self._probe: KafkaConsumer | None = None
        self._seen_topic_id: str | None = None
        self.resumed_topic_id: str | None = None  # set by the daemon once all are placed
        self._consumer = open_consumer(
            settings.kafka_bootstrap_servers,
            group_id=settings.consumer_group,
            client_id="audit-service",
            enable_auto_commit=False,
            # Never let the client pick a position: see the module docstring.
            auto_offset_reset="none",
            # The topic is provisioned (partitions, retention); a broker default would
            # silently differ.
            allow_auto_create_topics=False,
            max_poll_records=settings.batch_size,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
            fetch_max_bytes=max(52_428_800, settings.max_event_bytes * 2),
            max_partition_fetch_bytes=max(1_048_576, settings.max_event_bytes * 2),
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        if settings.kafka_partitions:
            self._consumer.assign([self._tp(p) for p in settings.kafka_partitions])
            self._hold(settings.kafka_partitions, reason="kafka_partitions", new=True)
        else:
            self._consumer.subscribe([self.topic], listener=_HoldAssigned(self))

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.topic, partition)

    def _hold(self, partitions: Iterable[int], reason: str, *, new: bool = False) -> None:
        """Pause partitions until placed. A `new` partition gets offset 0 as a placeholder
        position: without one the client would look up the group's Kafka offsets (and,
        with no reset policy, fail). May run on kafka-python's IO thread: no blocking calls.
        """
        tps = [self._tp(p) for p in partitions]
        if new:
            for tp in tps:
                self._consumer.seek(tp, 0)
        self._consumer.pause(*tps)
        with self._lock:
            for tp in tps:
                self._tokens += 1
                self._held[tp.partition] = self._tokens
                self._behind_since.pop(tp.partition, None)
        log.debug("partitions held until placed", extra={
            "partitions": [tp.partition for tp in tps], "reason": reason})

    def _release(self, partitions: Iterable[int]) -> None:
        with self._lock:
            for partition in partitions:
                self._held.pop(partition, None)
                self._behind_since.pop(partition, None)

    def held(self) -> dict[int, int]:
        """Partitions waiting to be placed, each with the token `place()` needs."""
        with self._lock:
            return dict(self._held)

    def place(self, partition: int, offset: int, token: int) -> bool:
        """Position a held partition and let it fetch; False (nothing done) when the
        partition was revoked or held again since `token` was handed out."""
        with self._lock:
            if self._held.get(partition) != token:
                return False
            del self._held[partition]
        tp = self._tp(partition)
        self._consumer.seek(tp, offset)
        self._consumer.resume(tp)
        return True

    def measure(self, partitions: Sequence[int]) -> TopicLog:
        """The topic's id and each partition's first and next offset, as the broker has
        them now.

        A separate client (no group) measures it from scratch, so no stale state of this
        consumer counts; the end is a fetch response's high watermark (see topic.log_ranges).
        """
        tps = [self._tp(p) for p in partitions]
        try:
            probe = self._probe_client()
            probe.topics()  # fresh metadata: the topic's id may have changed since last time
            ranges = log_ranges(probe, tps)
            return TopicLog(_topic_id(probe, self.topic), ranges)
        except KafkaError as exc:
            raise TransientError(f"measuring the partitions' offsets: {exc}") from exc

    def _probe_client(self) -> KafkaConsumer:
        """The measuring client, created on first use and kept (closing one right after a
        fetch makes kafka-python log a spurious metadata ERROR)."""
        if self._probe is None:
            self._probe = KafkaConsumer(
                bootstrap_servers=self._bootstrap, client_id="audit-service-probe",
                enable_auto_commit=False, auto_offset_reset="none",
                allow_auto_create_topics=False, request_timeout_ms=PROBE_TIMEOUT_MS,
                bootstrap_timeout_ms=PROBE_TIMEOUT_MS,
            )
        return self._probe

    def poll(self, timeout_ms: int, max_records: int) -> list[ConsumedMessage]:
        """Up to `max_records` messages, in offset order within each partition.

        A partition whose position the broker does not hold (it answered
        OFFSET_OUT_OF_RANGE, or its high watermark stays below our position) is held for
        the daemon to check and place again.
        """
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except OffsetOutOfRangeError as exc:
            out = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
            partitions = sorted(tp.partition for tp in out) or self.assigned_partitions()
            log.warning("the broker has no data at our position", extra={
                "partitions": partitions, "offsets": {tp.partition: o for tp, o in out.items()}})
            self._hold(partitions, reason="offset out of range")
            return []
        except KafkaError as exc:
            raise TransientError(f"polling Kafka: {exc}") from exc
        self._hold_partitions_behind_position()
        if self._topic_id_changed():
            # These may come from the new log; where to resume is for the daemon to decide.
            self._hold(self.assigned_partitions(), reason="topic id changed")
            return []
        messages: list[ConsumedMessage] = []
        for tp in sorted(polled, key=lambda tp: tp.partition):
            messages.extend(
                ConsumedMessage(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                for r in polled[tp]
            )
        return messages

    def _hold_partitions_behind_position(self) -> None:
        """Hold partitions whose high watermark stayed below our position: some brokers
        (Tansu) answer a fetch beyond their log with no records and no error."""
        now = time.monotonic()
        held = self.held()
        behind: list[int] = []
        for tp in self._consumer.assignment():
            if tp.partition in held:
                continue
            highwater = self._consumer.highwater(tp)
            position = self._consumer.position(tp, timeout_ms=0)
            if highwater is None or position is None or position <= highwater:
                self._behind_since.pop(tp.partition, None)
                continue
            since = self._behind_since.setdefault(tp.partition, now)
            if now - since >= BEHIND_POSITION_GRACE_S:
                behind.append(tp.partition)
        if behind:
            log.warning("the broker's log ends before our position", extra={
                "partitions": behind})
            self._hold(behind, reason="log ends before position")

    def _topic_id_changed(self) -> bool:
        """True once when the client's metadata shows a new id for the topic: it was
        deleted and created again, and its new log may already have grown past our
        positions, where no range check can tell."""
        seen, self._seen_topic_id = self._seen_topic_id, _topic_id(self._consumer, self.topic)
        if not (seen and self._seen_topic_id and seen != self._seen_topic_id):
            return False
        log.warning("the topic was recreated", extra={
            "topic": self.topic, "old_topic_id": seen, "topic_id": self._seen_topic_id})
        return True

    def commit(self, next_offsets: dict[int, int]) -> bool:
        """Best-effort Kafka commit after the database commit; False (logged) on failure."""
        offsets = {
            self._tp(partition): OffsetAndMetadata(offset, "", -1)
            for partition, offset in next_offsets.items()
        }
        try:
            self._consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
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
            self._consumer.seek(self._tp(partition), offset)

    def assigned_partitions(self) -> list[int]:
        return sorted(tp.partition for tp in self._consumer.assignment())

    def lag(self) -> dict[int, int]:
        """Messages between position and high watermark per placed partition, where known.

        Uses only what the last fetch responses reported (timeout 0), so it never blocks.
        """
        held = self.held()
        lag: dict[int, int] = {}
        for tp in self._consumer.assignment():
            if tp.partition in held:
                continue
            highwater = self._consumer.highwater(tp)
            position = self._consumer.position(tp, timeout_ms=0)
            if highwater is not None and position is not None:
                lag[tp.partition] = max(0, highwater - position)
        return lag

    def caught_up(self) -> bool:
        """True when every assigned partition is placed and consumed to its high watermark."""
        assignment = self._consumer.assignment()
        if not assignment or self.held():
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
        """Resume what pause() stopped; held partitions stay paused until placed."""
        held = self.held()
        self._consumer.resume(*(tp for tp in self._consumer.paused() if tp.partition not in held))

    def close(self) -> None:
        """Leave the group promptly so partitions move to another instance at once."""
        try:
            self._consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("error while leaving the consumer group", extra={"error": str(exc)})
        if self._probe is not None:
            self._probe.close()
