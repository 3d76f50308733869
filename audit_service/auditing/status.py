"""`audit-service status`: where the service stands, from the database and the broker.

The database parts (heads, record counts, stored offsets, rejects, the last verification)
come first and never depend on the broker; an unreachable broker only blanks the high
watermarks and lag, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from audit_service.broker.topic import high_watermarks
from audit_service.config import Settings
from audit_service.core.errors import ConnectionFailure
from audit_service.storage.reader import (
    AuditReader,
    ReconciliationRun,
    TenantOverview,
    VerificationRun,
)

BROKER_TIMEOUT_MS: Final = 5000
"""How long `status` waits for the broker before reporting it unreachable."""
HASH_PREFIX_CHARS: Final = 16


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: int
    stored_offset: int | None
    high_watermark: int | None

    @property
    def lag(self) -> int | None:
        """Messages on the broker not yet chained (all of them when nothing is stored)."""
        if self.high_watermark is None:
            return None
        return max(0, self.high_watermark - (self.stored_offset or 0))


@dataclass(frozen=True, slots=True)
class StatusReport:
    database: str
    topic: str
    consumer_group: str
    tenants: list[TenantOverview]
    verifications: dict[str, VerificationRun]
    partitions: list[PartitionStatus]
    rejected_events: int
    broker_error: str | None
    reconciliation: ReconciliationRun | None = None

    @property
    def last_verified_at(self) -> datetime | None:
        return max((run.started_at for run in self.verifications.values()), default=None)

    def as_json(self) -> dict[str, Any]:
        """The machine-readable form (`status --json`); times in ISO 8601."""
        return {
            "database": self.database,
            "topic": self.topic,
            "consumer_group": self.consumer_group,
            "tenants": [
                {
                    "tenant_id": t.tenant_id, "last_sequence": t.last_sequence,
                    "last_hash": t.last_hash, "last_event_time": _iso(t.last_timestamp),
                    "records": t.records,
                    "last_verification": _run_json(self.verifications.get(t.tenant_id)),
                }
                for t in self.tenants
            ],
            "partitions": [
                {"partition": p.partition, "stored_offset": p.stored_offset,
                 "high_watermark": p.high_watermark, "lag": p.lag}
                for p in self.partitions
            ],
            "broker": {"reachable": self.broker_error is None, "error": self.broker_error},
            "rejected_events": self.rejected_events,
            "last_verified_at": _iso(self.last_verified_at),
            "last_reconciliation": _reconciliation_json(self.reconciliation),
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _run_json(run: VerificationRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"valid": run.valid, "records_checked": run.records_checked,
            "started_at": _iso(run.started_at), "errors": run.errors}


def _reconciliation_json(run: ReconciliationRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"finished_at": _iso(run.finished_at), "ok": run.ok, "findings": run.findings,
            "partitions": run.partitions, "counts": run.counts, "error": run.error}


def collect_status(
    settings: Settings, reader: AuditReader, broker_timeout_ms: int = BROKER_TIMEOUT_MS
) -> StatusReport:
    """Read everything `status` shows: the database first, then the broker's watermarks."""
    stored = reader.stored_offsets(settings.consumer_group, settings.kafka_topic)
    tenants = reader.tenant_overview()
    verifications = reader.latest_verifications()
    rejected = reader.rejected_count()
    reconciliation = reader.latest_reconciliation()
    broker_error = None
    try:
        marks = high_watermarks(
            settings.kafka_bootstrap_servers, settings.kafka_topic, broker_timeout_ms
        )
    except ConnectionFailure as exc:
        marks, broker_error = {}, str(exc)
    partitions = [
        PartitionStatus(p, stored.get(p), marks.get(p)) for p in sorted(set(stored) | set(marks))
    ]
    return StatusReport(
        settings.redacted_database_url, settings.kafka_topic, settings.consumer_group,
        tenants, verifications, partitions, rejected, broker_error, reconciliation,
    )


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _verdict(run: VerificationRun | None) -> str:
    if run is None:
        return "never"
    return f"{'OK' if run.valid else 'BROKEN'} {_when(run.started_at)}"


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def render_status(report: StatusReport) -> str:
    """The readable form: a tenant table, a partition table and one-line facts."""
    lines = [f"database {report.database}, topic {report.topic}, "
             f"consumer group {report.consumer_group}", ""]
    tenant_rows = [
        [t.tenant_id, _cell(t.last_sequence), (t.last_hash or "-")[:HASH_PREFIX_CHARS],
         _when(t.last_timestamp), str(t.records), _verdict(report.verifications.get(t.tenant_id))]
        for t in report.tenants
    ]
    if tenant_rows:
        lines += _table(["TENANT", "LAST SEQ", "LAST HASH", "LAST EVENT", "RECORDS",
                         "LAST VERIFY"], tenant_rows, right={1, 4})
    else:
        lines.append("no tenants yet")
    lines.append("")
    partition_rows = [
        [str(p.partition), _cell(p.stored_offset), _cell(p.high_watermark), _cell(p.lag)]
        for p in report.partitions
    ]
    if partition_rows:
        lines += _table(["PARTITION", "STORED OFFSET", "HIGH WATERMARK", "LAG"],
                        partition_rows, right={0, 1, 2, 3})
    if report.broker_error is not None:
        lines.append(f"broker: UNREACHABLE ({report.broker_error}); "
                     "high watermarks and lag unknown")
    else:
        total = sum(p.lag or 0 for p in report.partitions)
        lines.append(f"broker: reachable, total lag {total}")
    lines.append(f"rejected events: {report.rejected_events}")
    broken = sorted(t for t, run in report.verifications.items() if not run.valid)
    if report.last_verified_at is None:
        lines.append("last verification: never (run `audit-service verify`)")
    else:
        verdict = f"BROKEN: {', '.join(broken)}" if broken else "all OK"
        lines.append(f"last verification: {_when(report.last_verified_at)}, "
                     f"{len(report.verifications)} tenants, {verdict}")
    lines.append(f"last reconciliation: {_reconciliation_verdict(report.reconciliation)}")
    return "\n".join(lines)


def _reconciliation_verdict(run: ReconciliationRun | None) -> str:
    if run is None:
        return "never (run `audit-service reconcile`)"
    if run.error is not None:
        return f"{_when(run.finished_at)}, did not finish: {run.error}"
    scope = f"{_when(run.finished_at)}, {len(run.partitions)} partitions"
    if run.ok:
        return f"{scope}, {run.counts.get('scanned', 0)} messages, all accounted for"
    return f"{scope}, {run.findings} FINDINGS (see audit_reconciliation_log)"
