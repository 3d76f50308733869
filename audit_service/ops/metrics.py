"""Prometheus metrics of one daemon, served as text on the health server's GET /metrics.

Each Daemon owns its own CollectorRegistry (tests run several daemons in one process).
The poll loop only increments and sets values; the only work done at scrape time is one
read of the chain heads, on the HTTP thread and through its own connection pool, so a
scrape never holds up the loop. Every label is bounded: rejection reasons are the
rejection kinds, retry causes are fixed, partitions are the topic's, and tenants are
capped by `metrics_max_tenants`.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from audit_service import __version__
from audit_service.core.errors import AuditServiceError
from audit_service.core.events import REJECTION_KINDS
from audit_service.core.outcomes import REJECTED_CONFLICT, REJECTED_REFUSED, BatchOutcome

log = logging.getLogger(__name__)

REJECTION_REASONS = (*REJECTION_KINDS, REJECTED_CONFLICT, REJECTED_REFUSED)
"""Values of the `reason` label of audit_events_rejected_total."""
RETRY_DATABASE = "database"
"""Retry cause: the batch transaction failed transiently (restart, deadlock, timeout)."""
RETRY_BROKER = "broker"
"""Retry cause: polling Kafka failed transiently."""

BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10_000, 50_000, 100_000)
"""Messages per batch; the top buckets cover the largest allowed batch_size."""
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21_600, 86_400)
"""Event timestamp -> commit; long tails matter when a backlog is replayed."""
TRANSACTION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""One batch transaction; statement_timeout_ms caps each statement at 60 s by default."""

HeadsReader = Callable[[], Mapping[str, int]]
"""Returns every tenant's head sequence (tenant_id -> last sequence number)."""
ReconciliationReader = Callable[[], tuple[datetime, int] | None]
"""Returns when the last completed `reconcile` run finished and its findings, or None."""


class _BulkHistogram(Collector):
    """A histogram fed a whole batch at once: one lock per batch instead of one per event.

    prometheus_client's Histogram.observe costs ~2 us per call, i.e. ~5 ms on the loop for
    a 2000-event batch; bisecting here is several times cheaper.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]):
        self._name = name
        self._documentation = documentation
        self._bounds = list(buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Sequence[float]) -> None:
        counts = [0] * len(self._counts)
        for value in values:
            counts[bisect_left(self._bounds, value)] += 1  # le: bound >= value
        total = sum(values)
        with self._lock:
            self._counts = [mine + new for mine, new in zip(self._counts, counts, strict=True)]
            self._sum += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip([*self._bounds, float("inf")], counts, strict=True):
            cumulative += count
            # prometheus_client leaves floatToGoString unannotated.
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        return [HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=total)]


class _TenantHeads(Collector):
    """Reads the chain heads at scrape time: the database, not this instance, knows them."""

    def __init__(self, read_heads: HeadsReader, max_tenants: int):
        self._read_heads = read_heads
        self._max_tenants = max_tenants

    def describe(self) -> Iterable[Metric]:
        return [self._head_family(), self._tenants_family()]

    def collect(self) -> Iterable[Metric]:
        try:
            heads = self._read_heads()
        except AuditServiceError as exc:
            log.warning("cannot read chain heads for /metrics", extra={"error": str(exc)})
            return []
        head = self._head_family()
        for tenant in sorted(heads)[: self._max_tenants]:
            head.add_metric([tenant], heads[tenant])
        tenants = self._tenants_family()
        tenants.add_metric([], len(heads))
        return [head, tenants]

    @staticmethod
    def _head_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "audit_tenant_head_sequence",
            "Sequence number of the tenant's last chained record (first tenants by id, capped).",
            labels=["tenant_id"],
        )

    @staticmethod
    def _tenants_family() -> GaugeMetricFamily:
        return GaugeMetricFamily("audit_tenants", "Tenants that have a chain.")


class _LastReconciliation(Collector):
    """The last completed `reconcile` run, read from its log at scrape time: the runs are
    separate processes (a timer), the database is where they leave their result."""

    def __init__(self, read_last_run: ReconciliationReader):
        self._read_last_run = read_last_run

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        try:
            last_run = self._read_last_run()
        except AuditServiceError as exc:
            log.warning("cannot read the reconciliation log for /metrics",
                        extra={"error": str(exc)})
            return []
        findings, finished = self._families()
        if last_run is not None:
            finished.add_metric([], last_run[0].timestamp())
            findings.add_metric([], last_run[1])
        return [findings, finished]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "audit_reconciliation_findings",
                "Findings of the last completed reconcile run: messages on the topic the "
                "store does not account for, and stored rows no message accounts for."),
            GaugeMetricFamily(
                "audit_reconciliation_last_run_timestamp_seconds",
                "Unix time at which the last completed reconcile run finished."),
        )


class ServiceMetrics:
    """The daemon's metrics; the poll loop calls the record/observe methods."""

    def __init__(self, read_heads: HeadsReader, max_tenants: int,
                 read_last_reconciliation: ReconciliationReader = lambda: None):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.chained = Counter("audit_events_chained", "Events appended to a tenant chain.",
                               registry=registry)
        self.duplicates = Counter(
            "audit_events_duplicates",
            "Redelivered events skipped because the same audit_id and content were chained.",
            registry=registry)
        self.rejected = Counter(
            "audit_events_rejected", "Messages quarantined in audit_rejected_events, by reason.",
            ["reason"], registry=registry)
        self.batches = Counter("audit_batches", "Batch transactions committed.",
                               registry=registry)
        self.batch_size = Histogram("audit_batch_size_messages", "Messages per committed batch.",
                                    buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.latency = _BulkHistogram(
            "audit_end_to_end_latency_seconds",
            "Time from an event's own timestamp to the commit of its batch.",
            LATENCY_BUCKETS_S)
        registry.register(self.latency)
        self.transaction = Histogram(
            "audit_batch_transaction_seconds", "Duration of a successful batch transaction.",
            buckets=TRANSACTION_BUCKETS_S, registry=registry)
        self.retries = Counter("audit_retries", "Transient failures retried, by cause.",
                               ["cause"], registry=registry)
        self.lag = Gauge(
            "audit_consumer_lag_messages",
            "Messages in an assigned partition not yet consumed (high watermark - position).",
            ["partition"], registry=registry)
        self.last_commit = Gauge("audit_last_commit_timestamp_seconds",
                                 "Unix time of the last committed batch.", registry=registry)
        self.checkpoints_signed = Counter(
            "audit_checkpoints_signed", "Checkpoints signed and committed to the database.",
            registry=registry)
        self.checkpoints_appended = Counter(
            "audit_checkpoints_published", "Checkpoints appended to the sink.",
            registry=registry)
        self.checkpoints_pending = Gauge(
            "audit_checkpoints_pending",
            "Checkpoints committed to the database but not yet in the sink.", registry=registry)
        self.checkpoint_last_published = Gauge(
            "audit_checkpoint_last_published_timestamp_seconds",
            "Unix time when the sink last held every committed checkpoint.", registry=registry)
        Info("audit_build", "Version of the running service.", registry=registry).info(
            {"version": __version__, "python": platform.python_version()})
        ProcessCollector(registry=registry)
        registry.register(_TenantHeads(read_heads, max_tenants))
        registry.register(_LastReconciliation(read_last_reconciliation))
        for reason in REJECTION_REASONS:  # export zeros, so rate() works from the start
            self.rejected.labels(reason)
        for cause in (RETRY_DATABASE, RETRY_BROKER):
            self.retries.labels(cause)
        self._lag_partitions: set[int] = set()

    def record_batch(self, outcome: BatchOutcome, messages: int) -> None:
        """Count a committed batch; its events' latency is measured to now."""
        now = time.time()
        self.batches.inc()
        self.batch_size.observe(messages)
        self.chained.inc(outcome.chained)
        self.checkpoints_signed.inc(len(outcome.checkpointed))
        self.duplicates.inc(outcome.duplicates)
        for kind, count in outcome.rejected_by_kind.items():
            self.rejected.labels(kind).inc(count)
        self.latency.observe_many([
            max(0.0, now - datetime.fromisoformat(timestamp).timestamp())
            for timestamp in outcome.event_timestamps
        ])
        self.last_commit.set(now)

    def count_checkpoints(self, signed: int) -> None:
        self.checkpoints_signed.inc(signed)

    def checkpoints_published(self, appended: int, at: float) -> None:
        """After a publication pass that left the sink complete."""
        self.checkpoints_appended.inc(appended)
        self.checkpoint_last_published.set(at)

    def observe_transaction(self, seconds: float) -> None:
        self.transaction.observe(seconds)

    def count_retry(self, cause: str) -> None:
        self.retries.labels(cause).inc()

    def set_lag(self, lag: Mapping[int, int]) -> None:
        """Replace the lag gauges; partitions no longer assigned disappear."""
        for partition in self._lag_partitions - set(lag):
            self.lag.remove(str(partition))
        for partition, messages in lag.items():
            self.lag.labels(str(partition)).set(messages)
        self._lag_partitions = set(lag)

    def exposition(self) -> tuple[bytes, str]:
        """The body and content type of a GET /metrics response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
