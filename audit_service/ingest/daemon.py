"""The daemon: a poll loop you can read top to bottom.

    stop requested? -> poll batch N+2 -> hand it on (validation worker, then committer
    thread; see pipeline) -> acknowledge finished batches in poll order (the PostgreSQL
    commit, then the offsets to Kafka) -> place newly held partitions -> mark alive
    (health state, systemd watchdog, lag gauges)

At most three batches are in flight; `pipeline.BatchPipeline` keeps their transactions one
at a time, strictly in poll order. So the pipeline changes nothing about the transaction
boundaries, the locking or the rule that the database commits before Kafka; it only lets
polling (this thread), validation (a worker process) and the transaction (PostgreSQL)
overlap.

A partition the consumer gains (or whose position the broker no longer holds) waits,
paused, until the loop places it at the offset stored in PostgreSQL. That offset is read
only when nothing polled is left uncommitted, and it is checked against the broker's log
first: outside it, `on_offset_out_of_range` decides (see core.offset_policy).

Transient failures (database restarting, deadlock, broker away) back off and retry the
same work; the loop never skips ahead. Anything unexpected propagates, is logged by the
CLI, and the process exits non-zero so systemd restarts it. systemd hears READY=1 once
the database answered and partitions are assigned, WATCHDOG=1 while the loop turns, and
STOPPING=1 on the way out.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from types import FrameType
from typing import TypeVar

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from audit_service.broker.consumer import AuditConsumer
from audit_service.config import Settings
from audit_service.core.errors import ConfigurationError, TransientError
from audit_service.core.events import ValidationLimits
from audit_service.core.messages import ConsumedMessage
from audit_service.core.offset_policy import plan_starting_points
from audit_service.core.outcomes import BatchOutcome
from audit_service.ingest.batch import PreparedBatch, commit_prepared, move_stored_offset
from audit_service.ingest.checkpoint_duty import CheckpointDuty
from audit_service.ingest.checkpointing import checkpointer_from
from audit_service.ingest.pipeline import BatchPipeline
from audit_service.ingest.validation_pool import ValidationPool
from audit_service.ops.health import HealthServer, LoopState
from audit_service.ops.metrics import RETRY_BROKER, RETRY_DATABASE, ServiceMetrics
from audit_service.ops.notify import SystemdNotifier
from audit_service.storage.engine import check_connection, create_db_engine
from audit_service.storage.migrations import ensure_schema_current
from audit_service.storage.reader import AuditReader

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5
"""First retry delay after a transient failure; doubles up to Settings.retry_max_backoff_s."""
SHUTDOWN_POLL_S = 0.2
"""Granularity at which a sleeping retry notices a stop request."""
OBSERVER_STATEMENT_TIMEOUT_MS = 2000
"""Bound on the /ready ping and the /metrics heads query: a probe must answer promptly."""
UNASSIGNED_WARNING_S = 30.0
"""How long the loop runs without partitions before it says so (and how often it repeats)."""

T = TypeVar("T")


@dataclass
class RunLimits:
    """Ways for tests and tooling to end the loop cleanly."""

    max_batches: int | None = None
    exit_when_idle: bool = False


@dataclass
class RunTotals:
    batches: int = 0
    chained: int = 0
    duplicates: int = 0
    rejected: int = 0


class StopSignal:
    """SIGTERM/SIGINT set an event; a second signal exits at once (the DB rolls back)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():
            os._exit(128 + signum)
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        self.event.set()


class Daemon:
    """Wires configuration, database, consumer and health server into the poll loop."""

    def __init__(self, settings: Settings, stop: StopSignal | None = None):
        self.settings = settings
        self.stop = stop or StopSignal()
        self.checkpointer = checkpointer_from(settings)  # a bad key fails before connecting
        self.limits = ValidationLimits(
            max_event_bytes=settings.max_event_bytes,
            max_clock_skew=timedelta(seconds=settings.max_clock_skew_s),
        )
        # The lock timeout bounds how long a batch waits for another instance's row lock,
        # so a stop request is noticed within it (signal handlers cannot run while libpq
        # blocks); the wait ends as a transient error and the batch is retried.
        self.engine: Engine = create_db_engine(
            settings.database_url, statement_timeout_ms=settings.statement_timeout_ms,
            lock_timeout_ms=settings.lock_timeout_ms,
        )
        # The HTTP thread gets its own pool, so probes and scrapes never wait for (or make
        # the loop wait for) a connection.
        self.observer_engine: Engine = create_db_engine(
            settings.database_url, statement_timeout_ms=OBSERVER_STATEMENT_TIMEOUT_MS,
            application_name="audit-service-observer",
        )
        self.state = LoopState()
        self.totals = RunTotals()
        self.metrics = ServiceMetrics(self._head_sequences, settings.metrics_max_tenants,
                                      self._last_reconciliation)
        self.notifier = SystemdNotifier()
        self._ready_notified = False
        self._unassigned_since = time.monotonic()
        self.checkpoints = (
            CheckpointDuty(settings, self.checkpointer, self.metrics)
            if self.checkpointer is not None else None)

    def _head_sequences(self) -> dict[str, int]:
        heads = AuditReader(self.observer_engine).heads()
        return {tenant: head.last_sequence for tenant, head in heads.items()}

    def _last_reconciliation(self) -> tuple[datetime, int] | None:
        run = AuditReader(self.observer_engine).latest_reconciliation(completed=True)
        return None if run is None else (run.finished_at, run.findings)

    def _database_ok(self) -> bool:
        try:
            with self.observer_engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def _sleep(self, seconds: float, consumer: AuditConsumer) -> None:
        """Wait for a retry while keeping the group membership alive (polls paused).

        A rebalance during the wait can assign partitions that are not paused; anything
        polled from them is rewound, never dropped, so no offset is skipped.
        """
        deadline = time.monotonic() + seconds
        while not self.stop.event.is_set() and time.monotonic() < deadline:
            try:
                unexpected = consumer.poll(int(SHUTDOWN_POLL_S * 1000), max_records=1)
            except TransientError:
                time.sleep(SHUTDOWN_POLL_S)
                continue
            if unexpected:
                consumer.rewind(unexpected)
                consumer.pause()
            self._mark_alive(consumer)

    def _commit(self, batch: PreparedBatch) -> BatchOutcome:
        """One batch transaction, timed."""
        started = time.monotonic()
        outcome = commit_prepared(self.engine, batch, self.settings.consumer_group,
                                  checkpointer=self.checkpointer)
        self.metrics.observe_transaction(time.monotonic() - started)
        return outcome

    def _retry(
        self, consumer: AuditConsumer, what: str, cause: str, attempt: Callable[[], T],
        failure: TransientError | None = None,
    ) -> T | None:
        """attempt() until it succeeds, backing off after each transient failure (`failure`:
        one that already happened); None if a stop was requested first. Fetching is paused
        meanwhile, the group membership kept."""
        backoff = BACKOFF_INITIAL_S
        paused = False
        try:
            while True:
                if failure is None:
                    try:
                        return attempt()
                    except TransientError as exc:
                        failure = exc
                self.metrics.count_retry(cause)
                log.warning(f"{what} failed, will retry", extra={
                    "error": str(failure), "retry_in_s": backoff})
                if not paused:
                    consumer.pause()
                    paused = True
                self._sleep(backoff, consumer)
                if self.stop.event.is_set():
                    log.info(f"stopping before {what} succeeded; nothing was skipped")
                    return None
                backoff = min(backoff * 2, self.settings.retry_max_backoff_s)
                failure = None
        finally:
            if paused:
                consumer.resume()

    def _poll(self, consumer: AuditConsumer) -> list[ConsumedMessage]:
        try:
            return consumer.poll(self.settings.poll_timeout_ms, self.settings.batch_size)
        except TransientError as exc:
            self.metrics.count_retry(RETRY_BROKER)
            log.warning("poll failed, will retry", extra={"error": str(exc)})
            self.stop.event.wait(BACKOFF_INITIAL_S)
            return []

    def _acknowledge(self, consumer: AuditConsumer, pipeline: BatchPipeline, *,
                     all_of_them: bool = False) -> bool:
        """Acknowledge finished batches in poll order (every batch in flight with
        `all_of_them`): their database commit, then their offsets to Kafka.

        A batch whose commit failed transiently is retried here while the later ones wait
        for their turn. False when one could not be committed before a stop request (it and
        the later ones are redelivered).
        """
        def retry(batch: PreparedBatch, failure: TransientError) -> BatchOutcome | None:
            return self._retry(
                consumer, "batch", RETRY_DATABASE, lambda: self._commit(batch), failure)

        while len(pipeline) if all_of_them else pipeline.oldest_due():
            finished = pipeline.finish_oldest(retry)
            if finished is None:
                return False
            messages, outcome = finished
            consumer.commit(outcome.next_offsets)
            self._record(outcome, messages)
            if self.checkpoints is not None:
                self.checkpoints.committed(outcome.checkpointed)
        return True

    def _place_held(self, consumer: AuditConsumer) -> bool:
        """Place every held partition at its stored offset, checked against the broker's
        log (offset_policy); False if stopped first. Callers make sure no polled batch is
        uncommitted, so the stored offsets are final."""
        held = consumer.held()
        partitions = sorted(held)
        group, topic = self.settings.consumer_group, self.settings.kafka_topic
        reader = AuditReader(self.engine)
        stored = self._retry(consumer, "reading stored offsets", RETRY_DATABASE,
                             lambda: reader.stored_offsets(group, topic, partitions))
        if stored is None:
            return False
        measured = self._retry(consumer, "measuring the partitions' logs", RETRY_BROKER,
                               lambda: consumer.measure(partitions))
        if measured is None:
            return False
        points = plan_starting_points(topic, stored, measured,
                                      self.settings.on_offset_out_of_range,
                                      consumer.resumed_topic_id)
        placed: dict[int, int] = {}
        for partition, point in points.items():
            if point.abandoned is not None:
                log.error(f"{point.reason}; moving it to {point.offset}", extra={
                    "partition": partition, "stored_offset": point.abandoned,
                    "new_offset": point.offset,
                    "policy": self.settings.on_offset_out_of_range})
                moved = self._retry(
                    consumer, "moving a stored offset", RETRY_DATABASE,
                    partial(move_stored_offset, self.engine, group, topic, partition,
                            point.abandoned, point.offset))
                if moved is None:
                    return False
                if not moved:
                    continue  # changed meanwhile: stays held, decided again next turn
            if consumer.place(partition, point.offset, held[partition]):
                placed[partition] = point.offset
        if placed:
            log.info("partitions placed", extra={"seek_to": placed, "stored": stored})
        if not consumer.held():
            consumer.resumed_topic_id = measured.topic_id or consumer.resumed_topic_id
        return True

    def _record(self, outcome: BatchOutcome, batch: Sequence[ConsumedMessage]) -> None:
        self.totals.batches += 1
        self.totals.chained += outcome.chained
        self.totals.duplicates += outcome.duplicates
        self.totals.rejected += outcome.rejected
        self.metrics.record_batch(outcome, len(batch))
        log.info("batch committed", extra={
            "messages": len(batch), "chained": outcome.chained, "genesis": outcome.genesis,
            "duplicates": outcome.duplicates, "rejected": outcome.rejected,
            "skipped_committed": outcome.already_committed, "tenants": len(outcome.tenants),
            "offsets": outcome.next_offsets})

    def _mark_alive(self, consumer: AuditConsumer) -> None:
        """The loop turned: tell /health, systemd (READY once, then WATCHDOG) and the lag gauges.

        READY waits for an assignment, i.e. for the group join; run() reached the database.
        """
        partitions = consumer.assigned_partitions()
        self.state.mark_alive(partitions)
        self._warn_if_unassigned(partitions)
        if partitions and not self._ready_notified:
            self._ready_notified = True
            self.notifier.ready()
            log.info("ready", extra={"partitions": partitions})
        self.notifier.watchdog()
        self.metrics.set_lag(consumer.lag())

    def _warn_if_unassigned(self, partitions: list[int]) -> None:
        """Say so when no partition arrives (a missing topic is never auto-created)."""
        now = time.monotonic()
        if partitions:
            self._unassigned_since = now
        elif now - self._unassigned_since >= UNASSIGNED_WARNING_S:
            log.warning("no partitions assigned: is the topic missing on the broker, or are "
                        "there more instances than partitions?", extra={
                            "topic": self.settings.kafka_topic,
                            "group": self.settings.consumer_group,
                            "for_s": round(now - self._unassigned_since)})
            self._unassigned_since = now

    def _stop_checkpoints(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.stop()

    def _start_health_server(self) -> HealthServer | None:
        host, port = self.settings.health_host, self.settings.health_port
        if not port:
            return None
        try:
            health = HealthServer(
                host, port, self.state, self.settings.liveness_timeout_s, self._database_ok,
                self.metrics.exposition,
                ready_details=self.checkpoints.ready_details if self.checkpoints else None,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve /health on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        health.start()
        return health

    def _loop(self, consumer: AuditConsumer, limits: RunLimits, pool: ValidationPool) -> None:
        """Poll N+2 while N+1 is validated and N commits; acknowledge batches (database,
        then Kafka) strictly in poll order, until stopped."""
        with BatchPipeline(pool, self._commit) as pipeline:
            while not self.stop.event.is_set():
                if limits.max_batches is not None and pipeline.submitted >= limits.max_batches:
                    break
                batch = self._poll(consumer)
                if batch:
                    pipeline.submit(batch)
                if not self._acknowledge(consumer, pipeline):
                    return
                if consumer.held():
                    # The stored offsets are final only once nothing polled is uncommitted.
                    if not self._acknowledge(consumer, pipeline, all_of_them=True):
                        return
                    if not self._place_held(consumer):
                        return
                if self.checkpoints is not None:
                    self.checkpoints.sweep(self.engine)
                self._mark_alive(consumer)
                if limits.exit_when_idle and not len(pipeline) and consumer.caught_up():
                    return
            self._acknowledge(consumer, pipeline, all_of_them=True)

    def run(self, limits: RunLimits | None = None) -> RunTotals:
        """Run until stopped (signal, max_batches, or idle when asked); returns the totals."""
        limits = limits or RunLimits()
        check_connection(self.engine)
        with self.engine.connect() as connection:
            ensure_schema_current(connection)
        if self.checkpoints is not None:
            self.checkpoints.start()
        health = self._start_health_server()
        pool: ValidationPool | None = None
        try:
            pool = ValidationPool(self.limits, self.settings.validation_workers)
            pool.start()
            consumer = AuditConsumer(self.settings)
        except BaseException:
            if pool is not None:
                pool.close()
            if health is not None:
                health.stop()
            self._stop_checkpoints()
            self.observer_engine.dispose()
            raise
        log.info("audit-service running", extra={
            "topic": self.settings.kafka_topic, "group": self.settings.consumer_group,
            "database": self.settings.redacted_database_url})
        try:
            self._loop(consumer, limits, pool)
            if self.checkpoints is not None:  # a clean stop signs every tree that grew
                self.checkpoints.sweep(self.engine, every_grown=True)
        finally:
            self.notifier.stopping()
            pool.close()
            consumer.close()
            self._stop_checkpoints()
            if health is not None:
                health.stop()
            self.engine.dispose()
            self.observer_engine.dispose()
            log.info("audit-service stopped", extra={
                "batches": self.totals.batches, "chained": self.totals.chained,
                "duplicates": self.totals.duplicates, "rejected": self.totals.rejected})
        return self.totals
