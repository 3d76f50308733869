"""Validating in the worker process changes nothing about the outcome (validation_pool).

The same stream of good and bad messages goes through the real daemon twice, each time
into a fresh database from a fresh topic: once validated in the daemon's own thread
(`validation_workers=0`), once in a worker process (`validation_workers=1`). Everything
decided from the message bytes must come out the same: each tenant's chain (all but the
per-run fields ingested_at, previous_hash and record_hash), every rejection with its
coordinates, ids and reason, and the rejection kinds counted in the metrics (the kind
reaches the daemon only through pickling). Small batches keep several of them in flight.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any

from process_tree import python_children
from support import (
    chain_of,
    database_url_for,
    encode,
    new_topic,
    produce,
    rejections,
    service_settings,
    temporary_database,
    wire_event,
)

from audit_service.config import Settings
from audit_service.core.chain import verify_chain
from audit_service.ingest.daemon import Daemon, RunLimits, RunTotals, StopSignal
from audit_service.ops.metrics import REJECTION_REASONS

TENANT_A = "tenant-paths-a"
TENANT_B = "tenant-paths-b"
BATCH_SIZE = 5
RUN_TIMEOUT_S = 60.0
PER_RUN_FIELDS = ("ingested_at", "previous_hash", "record_hash")
"""Differ between two runs of the same events (ingested_at is the commit time)."""
EXPECTED_KINDS = {"json": 3, "taxonomy": 2, "key_mismatch": 1, "schema": 1, "nul": 1,
                  "tombstone": 1, "not_object": 1, "conflict": 1}

Message = tuple[bytes | None, bytes | None]


@dataclass
class Stream:
    """Messages per partition, and the audit_ids that must be chained, per tenant in order."""

    partitions: dict[int, list[Message]]
    chained: dict[str, list[str]]


def _stream() -> Stream:
    """Tenant A on partition 0, tenant B on partition 1, bad input of every common kind
    between their valid events (and one redelivery, which is neither chained nor rejected)."""
    a = [wire_event(TENANT_A) for _ in range(12)]
    b = [wire_event(TENANT_B, event_type="approval.granted") for _ in range(12)]
    raw_a = TENANT_A.encode()
    raw_b = TENANT_B.encode()
    bad_a: list[Message] = [
        (raw_a, b'{"audit_id": '),
        (raw_a, b"not json at all"),
        (raw_a, b'{"tenant_id": "x", "tenant_id": "y"}'),
        (raw_a, json.dumps(wire_event(TENANT_A, event_type="alert.unknown")).encode()),
        (raw_a, None),
        encode({**a[1], "actor_id": "someone-else"}),  # conflict: same audit_id, new content
        encode(a[2]),  # a redelivery: counted as a duplicate
    ]
    bad_b: list[Message] = [
        (raw_b, json.dumps(wire_event(TENANT_A)).encode()),  # key says B, event says A
        (raw_b, json.dumps(wire_event(TENANT_B, event_category="security")).encode()),
        (raw_b, json.dumps(wire_event(TENANT_B, surprise=True)).encode()),
        (raw_b, json.dumps(wire_event(TENANT_B, actor_id="nul\u0000")).encode()),
        (raw_b, b"[1, 2, 3]"),
    ]
    return Stream(
        {0: _interleave([encode(e) for e in a], bad_a),
         1: _interleave([encode(e) for e in b], bad_b)},
        {TENANT_A: [e["audit_id"] for e in a], TENANT_B: [e["audit_id"] for e in b]},
    )


def _interleave(valid: list[Message], bad: list[Message]) -> list[Message]:
    """Two valid messages, then one bad one, and so on (the bad ones all after a[2])."""
    merged: list[Message] = []
    for index, message in enumerate(valid):
        merged.append(message)
        if index % 2 and bad:
            merged.append(bad.pop(0))
    return merged + bad


@dataclass
class Outcome:
    totals: tuple[int, int, int]
    """(chained, duplicates, rejected)."""
    kinds: dict[str, float]
    chains: dict[str, list[dict[str, Any]]]
    rejected: list[tuple[Any, ...]]
    workers_seen: int
    """Validation worker processes seen during the run (sampled from /proc)."""


class _WorkerWatch(threading.Thread):
    """Samples this process's validation workers while the daemon runs in it."""

    def __init__(self) -> None:
        super().__init__(name="worker-watch", daemon=True)
        self.seen: set[int] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.seen.update(c.pid for c in python_children(os.getpid()) if c.is_worker)


def _run(settings: Settings) -> Outcome:
    """The real daemon in this process until idle (bounded), and what it stored."""
    stop = StopSignal()
    timer = threading.Timer(RUN_TIMEOUT_S, stop.event.set)
    watch = _WorkerWatch()
    daemon = Daemon(settings, stop)
    timer.start()
    watch.start()
    try:
        totals: RunTotals = daemon.run(RunLimits(exit_when_idle=True))
    finally:
        timer.cancel()
        watch.done.set()
        watch.join()
    assert not stop.event.is_set(), f"daemon did not go idle within {RUN_TIMEOUT_S}s"
    left = [c.describe() for c in python_children(os.getpid()) if c.is_worker]
    assert not left, f"validation worker still running after the daemon returned: {left}"

    def sample(reason: str) -> float:
        value = daemon.metrics.registry.get_sample_value(
            "audit_events_rejected_total", {"reason": reason})
        return value or 0.0

    url = settings.database_url
    chains = {}
    for tenant in (TENANT_A, TENANT_B):
        chain = chain_of(url, tenant)
        assert verify_chain(tenant, chain).valid, f"{tenant} chain broken"
        chains[tenant] = [_without(record, PER_RUN_FIELDS) for record in chain[1:]]
    stored = [(r.partition, r.offset, r.reason, r.tenant_id, r.audit_id, r.raw_key,
               r.raw_value) for r in rejections(url)]
    return Outcome((totals.chained, totals.duplicates, totals.rejected),
                   {reason: sample(reason) for reason in REJECTION_REASONS},
                   chains, sorted(stored, key=lambda row: row[:2]), len(watch.seen))


def _without(record: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in fields}


def _run_fresh(pg_admin_url: str, template_database: str, kafka_bootstrap: str,
               stream: Stream, workers: int) -> Outcome:
    """`stream` into a new topic, consumed into a new database with `workers` workers."""
    topic = new_topic(kafka_bootstrap, "audit.events.paths")
    for partition, messages in stream.partitions.items():
        produce(kafka_bootstrap, topic, messages, partition=partition)
    with temporary_database(pg_admin_url, "audit_paths", template_database) as name:
        url = database_url_for(pg_admin_url, name)
        return _run(service_settings(url, kafka_bootstrap, topic, batch_size=BATCH_SIZE,
                                     validation_workers=workers))


def test_worker_and_in_thread_validation_store_the_same_chains_and_rejections(
    pg_admin_url: str, template_database: str, kafka_bootstrap: str
) -> None:
    stream = _stream()
    in_thread = _run_fresh(pg_admin_url, template_database, kafka_bootstrap, stream, workers=0)
    in_worker = _run_fresh(pg_admin_url, template_database, kafka_bootstrap, stream, workers=1)

    # Each run is right on its own (two equally wrong runs would otherwise pass) ...
    rejected = sum(EXPECTED_KINDS.values())
    for outcome in (in_thread, in_worker):
        assert {t: [r["audit_id"] for r in c] for t, c in outcome.chains.items()} == \
            stream.chained
        assert outcome.totals == (24, 1, rejected)
        assert {k: v for k, v in outcome.kinds.items() if v} == EXPECTED_KINDS
        assert len(outcome.rejected) == rejected
    assert (in_thread.workers_seen, in_worker.workers_seen >= 1) == (0, True)
    # ... and both say the same, field by field, reason by reason.
    assert in_worker.chains == in_thread.chains
    assert in_worker.rejected == in_thread.rejected
    assert in_worker.kinds == in_thread.kinds
