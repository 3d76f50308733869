"""GET /metrics during a real pipeline run: the counters match what was produced."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from support import encode, produce, wire_event

from audit_service import __version__
from audit_service.config import Settings
from audit_service.dev.devstack import free_port
from audit_service.ingest.daemon import Daemon, RunLimits, RunTotals, StopSignal
from audit_service.ops.metrics import REJECTION_REASONS

SCRAPE_TIMEOUT_S = 60.0
"""First group join (~3 s) plus chaining a few dozen events, with a wide margin."""
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 5.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> tuple[str, Samples]:
    """(content type, {(sample name, sorted labels): value}) of one GET /metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return content_type, samples


def _scrape_until(port: int, done: Callable[[Samples], bool], thread: threading.Thread) -> Samples:
    """Scrape until `done` holds; fails if the daemon dies or time runs out."""
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    samples: Samples = {}
    while time.monotonic() < deadline:
        assert thread.is_alive(), "daemon stopped before the expected metrics appeared"
        try:
            _, samples = _scrape(port)
        except OSError:
            samples = {}  # the health server is not listening yet
        if samples and done(samples):
            return samples
        time.sleep(0.1)
    raise AssertionError(f"metrics did not settle within {SCRAPE_TIMEOUT_S}s: {samples}")


def test_metrics_count_what_was_produced_chained_and_rejected(
    settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    tenants = ["tenant-m1", "tenant-m2", "tenant-m3"]
    events = [wire_event(tenants[index % 3]) for index in range(30)]
    redelivered = events[0]
    conflicting = {**events[1], "actor_id": "someone-else"}
    messages = [encode(event) for event in events]
    messages += [
        encode(redelivered),  # identical: a duplicate, skipped
        encode(conflicting),  # same audit_id, other content: rejected as a conflict
        (b"tenant-m1", b"{not json"),
        encode(wire_event("tenant-m2"), key="tenant-m3"),
    ]
    produce(kafka_bootstrap, topic, messages)
    port = free_port()
    daemon_settings = settings.model_copy(
        update={"health_port": port, "metrics_max_tenants": 2})
    stop = StopSignal()
    totals: list[RunTotals] = []
    thread = threading.Thread(
        target=lambda: totals.append(Daemon(daemon_settings, stop).run(RunLimits())))
    thread.start()
    try:
        samples = _scrape_until(port, lambda s: (
            s.get(("audit_events_chained_total", ()), 0) >= 30
            and s.get(("audit_events_rejected_total", (("reason", "conflict"),)), 0) >= 1
            and s.get(("audit_tenants", ()), 0) >= 3
            and sum(v for (name, _), v in s.items() if name == "audit_consumer_lag_messages") == 0
        ), thread)
        content_type, _ = _scrape(port)
    finally:
        stop.event.set()
        thread.join(STOP_TIMEOUT_S)
    assert not thread.is_alive(), f"daemon did not stop within {STOP_TIMEOUT_S}s"

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert content_type.startswith("text/plain")
    assert value("audit_events_chained_total") == 30
    assert value("audit_events_duplicates_total") == 1
    expected_rejects = {"conflict": 1, "json": 1, "key_mismatch": 1}
    for reason in REJECTION_REASONS:
        assert value("audit_events_rejected_total", reason=reason) == expected_rejects.get(
            reason, 0), reason
    batches = value("audit_batches_total")
    assert batches >= 1
    assert value("audit_batch_size_messages_count") == batches
    assert value("audit_batch_size_messages_sum") == len(messages)
    assert value("audit_batch_transaction_seconds_count") == batches
    assert value("audit_end_to_end_latency_seconds_count") == 30
    assert 0 < value("audit_end_to_end_latency_seconds_sum") < 30 * SCRAPE_TIMEOUT_S
    assert value("audit_retries_total", cause="database") == 0
    assert value("audit_retries_total", cause="broker") == 0
    lag = {dict(labels)["partition"] for (name, labels) in samples
           if name == "audit_consumer_lag_messages"}
    assert lag == {"0", "1", "2", "3"}
    assert time.time() - value("audit_last_commit_timestamp_seconds") < SCRAPE_TIMEOUT_S
    # Capped at 2 of 3 tenants, first by id; sequence = genesis 0 + one per chained event.
    heads = {dict(labels)["tenant_id"]: v for (name, labels), v in samples.items()
             if name == "audit_tenant_head_sequence"}
    assert heads == {"tenant-m1": 10, "tenant-m2": 10}
    assert value("audit_tenants") == 3
    build = [dict(labels) for (name, labels) in samples if name == "audit_build_info"]
    assert [b["version"] for b in build] == [__version__]
    assert totals and (totals[0].chained, totals[0].duplicates, totals[0].rejected) == (30, 1, 3)
