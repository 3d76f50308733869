"""`audit-service reconcile`: every message on the topic accounted for in the store.

The chain proves that what is stored was not changed; the topic is the independent
evidence of what was sent. This reads each partition from the start of the broker's log up
to the offset stored in PostgreSQL, with a client of its own that joins no group (the
daemon's offsets are never touched), and merge-joins it with the records and rejects of
ONE database snapshot (see `reconciliation` for the rules, `reader.ReconciliationSnapshot`
for the snapshot). Both sides stream in offset order, so memory stays flat.

The stored offsets are read once, at the start of the snapshot, and the broker's log is
measured after that: a daemon committing meanwhile only adds pending messages beyond them.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine, insert

from audit_service.broker.topic import TopicReader
from audit_service.config import Settings
from audit_service.core.errors import AuditServiceError, ConfigurationError
from audit_service.core.events import ValidationLimits
from audit_service.core.offset_policy import LogRange
from audit_service.core.reconciliation import (
    Finding,
    PartitionPlan,
    PartitionReconciler,
    PartitionTally,
    unplaced_record,
)
from audit_service.storage.engine import create_db_engine, translated_errors
from audit_service.storage.models import AuditReconciliationLog
from audit_service.storage.reader import AuditReader, ReconciliationSnapshot

log = logging.getLogger(__name__)

FINDINGS_KEPT: Final = 1000
"""Findings a report holds for --json; the rest are counted (text output prints them all
as they are found)."""
FINDINGS_LOGGED: Final = 100
"""Findings stored with a run in audit_reconciliation_log."""
COUNTED: Final = ("scanned", "chained", "rejected", "redelivered", "pending", "findings")
"""The per-partition counts, in the order the summary shows them."""

NORMALISING_LIMITS: Final = ValidationLimits(max_event_bytes=sys.maxsize,
                                             max_clock_skew=timedelta(days=36_500))
"""Messages are validated only to normalise them as the daemon did. The size and clock
limits decide whether an event is accepted, not what its record holds, so a limit changed
since the event was chained must not turn its record into a finding."""

WORKER_POLL_S: Final = 0.2
"""How often the parent hands on the findings workers queued while it waits for them."""
WORKER_FLUSH_TIMEOUT_S: Final = 30.0
"""How long a finished worker's queued findings may take to arrive."""

FindingSink = Callable[[Finding], None]


@dataclass(slots=True)
class ReconciliationReport:
    """The outcome of one run: counts per partition and the findings."""

    topic: str
    consumer_group: str
    started_at: datetime
    partitions: list[PartitionTally] = field(default_factory=list)
    findings: int = 0
    kept_findings: list[Finding] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.findings == 0

    def totals(self) -> dict[str, int]:
        totals = {name: sum(getattr(t, name) for t in self.partitions) for name in COUNTED}
        totals["findings"] = self.findings  # includes records without coordinates
        return totals

    def add(self, finding: Finding) -> None:
        self.findings += 1
        if len(self.kept_findings) < FINDINGS_KEPT:
            self.kept_findings.append(finding)

    def as_json(self) -> dict[str, Any]:
        scanned = self.totals()["scanned"]
        return {
            "ok": self.ok, "topic": self.topic, "consumer_group": self.consumer_group,
            "started_at": self.started_at.isoformat(), "duration_s": round(self.duration_s, 3),
            "messages_per_s": round(scanned / self.duration_s) if self.duration_s else None,
            "totals": self.totals(),
            "partitions": [t.as_json() for t in self.partitions],
            "findings": [f.as_json() for f in self.kept_findings],
            "findings_omitted": self.findings - len(self.kept_findings),
        }


def _plan(snapshot: ReconciliationSnapshot, topic_reader: TopicReader,
          requested: Sequence[int]) -> list[PartitionPlan]:
    """Which partitions to scan, and how far. Without `requested`: the broker's, those with
    a stored offset, and any other partition the topic's rows name (empty logs)."""
    stored = snapshot.stored_offsets()
    on_broker = topic_reader.partitions()
    if requested:
        unknown = sorted(set(requested) - set(on_broker) - set(stored))
        if unknown:
            raise ConfigurationError(
                f"partition(s) {unknown} are not partitions of topic {topic_reader.topic} "
                f"(it has {len(on_broker)}) and have no stored offset")
        chosen = set(requested)
    else:
        chosen = set(on_broker) | set(stored) | snapshot.stray_partitions(len(on_broker))
    # Measured after the stored offsets were read: the log can only have grown past them.
    ranges = topic_reader.log_ranges(sorted(chosen & set(on_broker)))
    return [PartitionPlan(p, ranges.get(p, LogRange(0, 0)), stored.get(p, 0))
            for p in sorted(chosen)]


def _scan(plan: PartitionPlan, snapshot: ReconciliationSnapshot, topic_reader: TopicReader,
          now: datetime, sink: FindingSink) -> PartitionTally:
    """Reconcile one partition; each finding goes to `sink` as it is found."""
    reconciler = PartitionReconciler(plan, snapshot.chained, NORMALISING_LIMITS, now)
    begin = plan.log.begin
    for finding in reconciler.run(
        topic_reader.read(plan.partition, begin, plan.scan_end),
        snapshot.records(plan.partition, begin), snapshot.rejects(plan.partition, begin),
    ):
        sink(finding)
    return reconciler.tally


_worker: tuple[Settings, AuditReader, Any] | None = None


def _start_worker(settings: Settings, findings: Any) -> None:
    global _worker
    engine = create_db_engine(settings.database_url, pool_size=1,
                              application_name="audit-service-reconcile")
    _worker = (settings, AuditReader(engine), findings)


def _scan_in_worker(plan: PartitionPlan, shared: str, now: datetime) -> tuple[PartitionTally,
                                                                             int]:
    """One partition in a worker process, in the parent's snapshot; findings go to the
    parent's queue. Returns the tally and how many findings were queued."""
    assert _worker is not None, "worker not initialised"
    settings, reader, findings = _worker
    queued = 0

    def sink(finding: Finding) -> None:
        nonlocal queued
        findings.put(finding)
        queued += 1

    topic_reader = TopicReader(settings)
    try:
        with reader.reconciliation_snapshot(settings.consumer_group, settings.kafka_topic,
                                            shared) as snapshot:
            return _scan(plan, snapshot, topic_reader, now, sink), queued
    finally:
        topic_reader.close()


def _in_parallel(settings: Settings, plans: list[PartitionPlan], shared: str, now: datetime,
                 jobs: int, sink: FindingSink) -> list[PartitionTally]:
    """Partitions in `jobs` processes (parsing and hashing are CPU-bound, threads would
    share one core), the largest first; tallies in partition order.

    Workers are forked from a fork server that imported this module once (~0.5 s of CPU
    per spawned worker otherwise); it holds no connection or thread to inherit.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    findings = context.Queue()
    received = 0

    def drain(expected: int | None = None) -> None:
        """Hand queued findings to `sink`: those already there, or (with `expected`) until
        that many have arrived in all (a worker's queue may still be flushing)."""
        nonlocal received
        while expected is None or received < expected:
            try:
                finding = (findings.get_nowait() if expected is None
                           else findings.get(timeout=WORKER_FLUSH_TIMEOUT_S))
            except queue.Empty:
                if expected is None:
                    return
                raise AuditServiceError("a reconcile worker's findings did not arrive") from None
            received += 1
            sink(finding)

    with ProcessPoolExecutor(min(jobs, len(plans)), mp_context=context,
                             initializer=_start_worker, initargs=(settings, findings)) as pool:
        futures = {plan.partition: pool.submit(_scan_in_worker, plan, shared, now)
                   for plan in sorted(plans, key=lambda p: p.scan_end - p.log.begin,
                                      reverse=True)}
        try:
            running = set(futures.values())
            while running:
                _, running = wait(running, timeout=WORKER_POLL_S)
                drain()
            results = [futures[plan.partition].result() for plan in plans]
            drain(expected=sum(queued for _, queued in results))
            return [tally for tally, _ in results]
        finally:
            for future in futures.values():
                future.cancel()


def reconcile(
    settings: Settings, reader: AuditReader, partitions: Sequence[int] = (),
    on_finding: FindingSink | None = None, jobs: int = 1,
) -> ReconciliationReport:
    """Reconcile the topic (or `partitions` of it) with the store, `jobs` partitions at a
    time; findings also go to `on_finding` as they are found. Raises ConnectionFailure when
    either side cannot be read to the end."""
    report = ReconciliationReport(settings.kafka_topic, settings.consumer_group,
                                  datetime.now(UTC))

    def sink(finding: Finding) -> None:
        report.add(finding)
        if on_finding is not None:
            on_finding(finding)

    clock = time.monotonic()
    topic_reader = TopicReader(settings)
    try:
        with reader.reconciliation_snapshot(settings.consumer_group,
                                            settings.kafka_topic) as snapshot:
            plans = _plan(snapshot, topic_reader, partitions)
            if jobs > 1 and len(plans) > 1:
                report.partitions = _in_parallel(settings, plans, snapshot.export(),
                                                 report.started_at, jobs, sink)
            else:
                report.partitions = [_scan(plan, snapshot, topic_reader, report.started_at, sink)
                                     for plan in plans]
            if not partitions:
                for record in snapshot.unplaced_records():
                    finding = unplaced_record(record)
                    if finding is not None:
                        sink(finding)
    finally:
        topic_reader.close()
        report.duration_s = time.monotonic() - clock
    return report


def record_run(engine: Engine, report: ReconciliationReport, error: str | None = None) -> None:
    """Append the run to audit_reconciliation_log (an `error` says why it did not finish)."""
    finished_at = datetime.now(UTC)
    with (translated_errors("recording the run in audit_reconciliation_log"),
          engine.begin() as connection):
        connection.execute(insert(AuditReconciliationLog).values(
            topic=report.topic, consumer_group=report.consumer_group,
            partitions=[t.partition for t in report.partitions],
            started_at=report.started_at, finished_at=finished_at,
            duration_ms=round(report.duration_s * 1000), counts=report.totals(),
            findings=report.findings,
            finding_details=[f.as_json() for f in report.kept_findings[:FINDINGS_LOGGED]],
            ok=error is None and report.ok, error=error,
        ))


def run_and_record(
    settings: Settings, reader: AuditReader, partitions: Sequence[int] = (),
    on_finding: FindingSink | None = None, *, jobs: int = 1, record: bool = True,
) -> ReconciliationReport:
    """`reconcile`, then its row in the log; a run that could not finish is logged with
    its error before the error propagates."""
    started_at = datetime.now(UTC)
    try:
        report = reconcile(settings, reader, partitions, on_finding, jobs)
    except AuditServiceError as exc:
        if record and not isinstance(exc, ConfigurationError):  # a usage error is no run
            failed = ReconciliationReport(settings.kafka_topic, settings.consumer_group,
                                          started_at)
            failed.duration_s = (datetime.now(UTC) - started_at).total_seconds()
            try:
                record_run(reader.engine, failed, error=str(exc))
            except AuditServiceError as log_error:  # the first error is the one to report
                log.warning(f"the failed run was not recorded either: {log_error}")
        raise
    if record:
        record_run(reader.engine, report)
    return report


def _table(headers: Sequence[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [list(headers), *rows]) for i in range(len(headers))]
    return ["  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row))
            for row in [list(headers), *rows]]


def summary_line(report: ReconciliationReport) -> str:
    """The verdict in one line (`make run` prints it)."""
    totals = report.totals()
    rate = f"{totals['scanned'] / report.duration_s:,.0f}" if report.duration_s else "-"
    count = f"{len(report.partitions)} partition{'s' if len(report.partitions) != 1 else ''}"
    if not report.ok:
        return (f"reconcile: FAILED, {report.findings} finding"
                f"{'s' if report.findings != 1 else ''} in {count} "
                f"({totals['scanned']} messages scanned)")
    return (f"reconcile: OK, {count}, {totals['scanned']} messages accounted for "
            f"({totals['chained']} chained, {totals['rejected']} rejected, "
            f"{totals['redelivered']} redelivered), {totals['pending']} pending, "
            f"in {report.duration_s:.1f}s ({rate} messages/s)")


def render_summary(report: ReconciliationReport) -> list[str]:
    """The per-partition table and the retention notes (the verdict is `summary_line`)."""
    headers = ["PARTITION", "LOG START", "STORED OFFSET", "LOG END",
               *(name.upper() for name in COUNTED)]
    rows = [[str(t.partition), str(t.log_begin), str(t.stored_offset), str(t.log_end),
             *(str(getattr(t, name)) for name in COUNTED)] for t in report.partitions]
    lines = _table(headers, rows) if rows else ["no partitions"]
    lines += [f"partition {t.partition}: {t.retention_note}"
              for t in report.partitions if t.retention_note]
    unplaced = report.findings - sum(t.findings for t in report.partitions)
    if unplaced:
        lines.append(f"records without coordinates: {unplaced} finding(s)")
    return lines
