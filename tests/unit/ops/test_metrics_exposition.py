"""The metrics object alone: what a batch outcome turns into in the exposition text."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from audit_service.core.chain import format_timestamp
from audit_service.core.errors import TransientError
from audit_service.core.outcomes import BatchOutcome
from audit_service.ops.metrics import ServiceMetrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(metrics: ServiceMetrics) -> Samples:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def _ago(seconds: float) -> str:
    return format_timestamp(datetime.now(UTC) - timedelta(seconds=seconds))


def test_a_batch_updates_counters_and_the_latency_histogram_buckets() -> None:
    metrics = ServiceMetrics(lambda: {}, max_tenants=10)
    outcome = BatchOutcome(
        chained=3, duplicates=2, rejected=3, rejected_by_kind=Counter(json=2, conflict=1),
        event_timestamps=[_ago(0.3), _ago(7), format_timestamp(datetime.now(UTC) + timedelta(
            seconds=60))],  # a producer clock ahead of ours counts as zero latency
    )

    metrics.record_batch(outcome, messages=8)
    samples = _samples(metrics)

    assert samples[("audit_events_chained_total", ())] == 3
    assert samples[("audit_events_duplicates_total", ())] == 2
    assert samples[("audit_events_rejected_total", (("reason", "json"),))] == 2
    assert samples[("audit_events_rejected_total", (("reason", "conflict"),))] == 1
    assert samples[("audit_events_rejected_total", (("reason", "schema"),))] == 0
    assert samples[("audit_batch_size_messages_sum", ())] == 8
    buckets = {dict(labels)["le"]: value for (name, labels), value in samples.items()
               if name == "audit_end_to_end_latency_seconds_bucket"}
    assert (buckets["0.05"], buckets["0.5"], buckets["5.0"], buckets["10.0"]) == (1, 2, 2, 3)
    assert buckets["+Inf"] == samples[("audit_end_to_end_latency_seconds_count", ())] == 3
    assert 7 <= samples[("audit_end_to_end_latency_seconds_sum", ())] < 9


def test_lag_of_a_revoked_partition_disappears() -> None:
    metrics = ServiceMetrics(lambda: {}, max_tenants=10)

    metrics.set_lag({0: 5, 1: 0})
    metrics.set_lag({1: 3})

    lag = {dict(labels)["partition"]: value for (name, labels), value in
           _samples(metrics).items() if name == "audit_consumer_lag_messages"}
    assert lag == {"1": 3}


def test_tenant_heads_are_capped_and_the_total_still_counts_every_tenant() -> None:
    metrics = ServiceMetrics(lambda: {"t-c": 7, "t-a": 3, "t-b": 0}, max_tenants=2)

    samples = _samples(metrics)

    heads = {dict(labels)["tenant_id"]: value for (name, labels), value in samples.items()
             if name == "audit_tenant_head_sequence"}
    assert heads == {"t-a": 3, "t-b": 0}
    assert samples[("audit_tenants", ())] == 3


def test_an_unreadable_database_drops_only_the_tenant_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def heads() -> dict[str, int]:
        raise TransientError("reading chain heads: connection refused")

    metrics = ServiceMetrics(heads, max_tenants=10)

    with caplog.at_level(logging.WARNING, logger="audit_service.ops.metrics"):
        samples = _samples(metrics)

    assert ("audit_tenants", ()) not in samples
    assert samples[("audit_events_chained_total", ())] == 0
    assert [r.getMessage() for r in caplog.records] == ["cannot read chain heads for /metrics"]


def test_the_last_reconciliation_is_exported_and_absent_until_one_ran() -> None:
    finished = datetime(2026, 11, 26, 17, 0, tzinfo=UTC)
    metrics = ServiceMetrics(lambda: {}, max_tenants=10,
                             read_last_reconciliation=lambda: (finished, 3))
    never = ServiceMetrics(lambda: {}, max_tenants=10)

    samples = _samples(metrics)

    assert samples[("audit_reconciliation_findings", ())] == 3
    assert samples[("audit_reconciliation_last_run_timestamp_seconds", ())] == \
        finished.timestamp()
    assert ("audit_reconciliation_findings", ()) not in _samples(never)


def test_an_unreadable_reconciliation_log_drops_only_its_metrics() -> None:
    def last_run() -> tuple[datetime, int] | None:
        raise TransientError("reading the reconciliation log: connection refused")

    samples = _samples(ServiceMetrics(lambda: {}, max_tenants=10,
                                      read_last_reconciliation=last_run))

    assert ("audit_reconciliation_findings", ()) not in samples
    assert samples[("audit_tenants", ())] == 0
