"""Kafka clients that join no group: topic metadata, high watermarks, log ranges, the
topic reader of `reconcile`, topic creation and a producer.

`check-config`, `status`, `reconcile` and the dev stack use these; none of them commits
an offset or auto-creates a topic, so they can never disturb the daemon's consumer group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, OffsetOutOfRangeError, TopicAlreadyExistsError

from audit_service.config import Settings
from audit_service.core.errors import ConnectionFailure, TransientError
from audit_service.core.messages import ConsumedMessage
from audit_service.core.offset_policy import LogRange

log = logging.getLogger(__name__)

POLL_MS: Final = 100
"""How long one poll waits while reading high watermarks."""
ADMIN_REQUEST_TIMEOUT_MS: Final = 5000
TOPIC_POLL_INTERVAL_S: Final = 0.1
"""Pause between metadata checks while a new topic's partitions get leaders."""
PRODUCER_CLOSE_TIMEOUT_S: Final = 10
FETCH_MAX_WAIT_MS = 100
"""How long the broker may hold an empty fetch. Apache Kafka answers as soon as data
arrives; Tansu holds the fetch for the full wait, which at the client default (500 ms)
put p99 event-to-commit latency above 500 ms at 1,000 events/s. 100 ms costs one idle
fetch per 100 ms per broker."""

PROBE_TIMEOUT_MS = 10_000
"""Bound on measuring the partitions' log ranges with a short-lived client."""
PROBE_POLL_MS = 100


def open_consumer(bootstrap_servers: str, **options: Any) -> KafkaConsumer:
    """A KafkaConsumer of the comma-separated `bootstrap_servers`; a broker that cannot be
    reached is a ConnectionFailure naming it, whoever asked."""
    try:
        return KafkaConsumer(bootstrap_servers=bootstrap_servers.split(","), **options)
    except KafkaError as exc:
        raise ConnectionFailure(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc


def topic_partitions(settings: Settings, timeout_ms: int) -> list[int]:
    """The configured topic's partitions (empty if it does not exist), for check-config."""
    consumer = open_consumer(
        settings.kafka_bootstrap_servers, client_id="audit-service-check",
        allow_auto_create_topics=False, bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
    )
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
    consumer = open_consumer(
        bootstrap_servers, client_id="audit-service-status", enable_auto_commit=False,
        allow_auto_create_topics=False, bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
    )
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


def log_ranges(client: KafkaConsumer, tps: Sequence[TopicPartition]) -> dict[int, LogRange]:
    """Each partition's first offset and true end, measured with `client` (assigned here).

    The end is the high watermark of a fetch response: Tansu answers ListOffsets(latest)
    with the start of the last record batch (SPEC 7), which would make a partition consumed
    to its end look out of range. Raises KafkaError, or TransientError on a silent broker.
    """
    client.assign([])  # forget a previous measurement's fetch state
    client.assign(tps)
    begins = client.beginning_offsets(tps, timeout_ms=PROBE_TIMEOUT_MS)
    listed_ends = client.end_offsets(tps, timeout_ms=PROBE_TIMEOUT_MS)
    for tp in tps:
        client.seek(tp, listed_ends[tp])
    deadline = time.monotonic() + PROBE_TIMEOUT_MS / 1000
    while any(client.highwater(tp) is None for tp in tps):
        if time.monotonic() > deadline:
            raise TransientError("measuring the partitions' offsets: no fetch "
                                 f"response within {PROBE_TIMEOUT_MS} ms")
        client.poll(timeout_ms=PROBE_POLL_MS, max_records=1)
    return {tp.partition: LogRange(begins[tp], max(listed_ends[tp], client.highwater(tp)))
            for tp in tps}


READ_STALL_TIMEOUT_S = 30.0
"""How long `TopicReader.read` waits for a partition's next message below the end it was
asked for before it gives up: the broker is then not serving the log."""
READ_POLL_MS = 500
READ_MAX_RECORDS = 10_000


class TopicReader:
    """Reads stretches of the topic's partitions for `reconcile`: no group (it never joins,
    commits or moves the daemon's offsets), no auto-commit, no position of its own.

    Every broker failure is a ConnectionFailure: a check that cannot read its evidence
    must say so, not retry forever.
    """

    def __init__(self, settings: Settings, timeout_ms: int = PROBE_TIMEOUT_MS):
        self.topic = settings.kafka_topic
        self._client = open_consumer(
            settings.kafka_bootstrap_servers,
            group_id=None, client_id="audit-service-reconcile", enable_auto_commit=False,
            auto_offset_reset="none", allow_auto_create_topics=False,
            bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms,
            fetch_max_bytes=max(52_428_800, settings.max_event_bytes * 2),
            # One partition is read at a time: let each fetch carry a large share of it.
            max_partition_fetch_bytes=max(16_777_216, settings.max_event_bytes * 2),
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )

    def partitions(self) -> list[int]:
        """The topic's partitions; ConnectionFailure when the topic does not exist."""
        try:
            partitions = self._client.partitions_for_topic(self.topic)
        except KafkaError as exc:
            raise ConnectionFailure(f"cannot read Kafka metadata: {exc}") from exc
        if not partitions:
            raise ConnectionFailure(f"topic {self.topic!r} does not exist on the broker")
        return sorted(partitions)

    def log_ranges(self, partitions: Sequence[int]) -> dict[int, LogRange]:
        """Each partition's first offset still held and its true end, as of now."""
        try:
            return log_ranges(self._client, [TopicPartition(self.topic, p) for p in partitions])
        except (KafkaError, TransientError) as exc:
            raise ConnectionFailure(f"measuring the partitions' offsets: {exc}") from exc

    def read(self, partition: int, start: int, end: int) -> Iterator[ConsumedMessage]:
        """The messages of `partition` from `start` up to (not including) `end`, in offset
        order. Offsets without a message (transaction markers) are simply absent."""
        tp = TopicPartition(self.topic, partition)
        try:
            self._client.assign([tp])
            self._client.seek(tp, start)
            position, progress_at = start, time.monotonic()
            while position < end:
                polled = self._client.poll(timeout_ms=READ_POLL_MS,
                                           max_records=READ_MAX_RECORDS).get(tp, [])
                for r in polled:
                    if r.offset >= end:
                        return
                    yield ConsumedMessage(r.topic, r.partition, r.offset, r.key, r.value,
                                          r.timestamp)
                next_position = self._client.position(tp)
                if next_position > position:
                    position, progress_at = next_position, time.monotonic()
                elif time.monotonic() - progress_at > READ_STALL_TIMEOUT_S:
                    raise ConnectionFailure(
                        f"partition {partition}: no data from the broker at offset {position} "
                        f"for {READ_STALL_TIMEOUT_S:.0f}s (the log should reach {end})")
        except OffsetOutOfRangeError as exc:
            raise ConnectionFailure(
                f"partition {partition}: the broker no longer holds the offsets being read "
                "(retention moved the start of the log during the run); run it again"
            ) from exc
        except KafkaError as exc:
            raise ConnectionFailure(f"reading partition {partition} from Kafka: {exc}") from exc

    def close(self) -> None:
        try:
            self._client.close()
        except KafkaError as exc:
            log.warning("error while closing the reconcile consumer", extra={"error": str(exc)})
