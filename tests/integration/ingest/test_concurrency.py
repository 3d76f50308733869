"""Two writers at once: the row locks keep every chain linear and every message single.

These call the batch transaction directly from two threads, each with its own engine
(separate connections, real commits), so the only thing serialising them is PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from sqlalchemy import create_engine
from support import chain_of, wire_event

from audit_service.core.chain import verify_chain
from audit_service.core.events import ValidationLimits
from audit_service.core.messages import ConsumedMessage
from audit_service.core.outcomes import BatchOutcome
from audit_service.core.record_text import record_of
from audit_service.ingest.batch import commit_batch
from audit_service.storage.reader import AuditReader

GROUP = "audit-test-concurrency"
LIMITS = ValidationLimits()


def _messages(tenant: str, partition: int, first_offset: int, count: int) -> list[ConsumedMessage]:
    return [
        ConsumedMessage("audit.events", partition, first_offset + index, tenant.encode(),
                        json.dumps(wire_event(tenant)).encode())
        for index in range(count)
    ]


def _in_parallel(database_url: str, jobs: list[Callable[..., BatchOutcome]]) -> list[BatchOutcome]:
    """Run each job with its own engine in its own thread; re-raise any failure."""
    outcomes: list[BatchOutcome] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def worker(job: Callable[..., BatchOutcome]) -> None:
        engine = create_engine(database_url, pool_size=1)
        try:
            barrier.wait(timeout=30)
            outcomes.append(job(engine))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(outcomes) == len(jobs)
    return outcomes


def test_two_writers_on_one_new_tenant_keep_its_chain_linear(database_url: str) -> None:
    # Different partitions, so the offset locks do not serialise them: only the head lock.
    rounds = [(_messages("tenant-c", 0, n * 10, 10), _messages("tenant-c", 1, n * 10, 10))
              for n in range(15)]

    def writer(side: int) -> Callable[..., BatchOutcome]:
        def job(engine: object) -> BatchOutcome:
            total = BatchOutcome()
            for pair in rounds:
                outcome = commit_batch(engine, pair[side], GROUP, LIMITS)  # type: ignore[arg-type]
                total.chained += outcome.chained
                total.genesis += outcome.genesis
            return total
        return job

    outcomes = _in_parallel(database_url, [writer(0), writer(1)])

    chain = chain_of(database_url, "tenant-c")
    assert sum(o.genesis for o in outcomes) == 1
    assert sum(o.chained for o in outcomes) == 300
    assert len(chain) == 301
    assert len({r["audit_id"] for r in chain}) == 301
    assert verify_chain("tenant-c", chain).valid


def test_two_instances_holding_the_same_partition_chain_each_message_once(
    database_url: str,
) -> None:
    # The same 200 offsets of one partition, processed by both "instances" at once,
    # as happens briefly around a rebalance.
    batches = [_messages(f"tenant-{n % 3}", 2, n * 20, 20) for n in range(10)]

    def instance(engine: object) -> BatchOutcome:
        total = BatchOutcome()
        for batch in batches:
            outcome = commit_batch(engine, batch, GROUP, LIMITS)  # type: ignore[arg-type]
            total.chained += outcome.chained
            total.already_committed += outcome.already_committed
        return total

    outcomes = _in_parallel(database_url, [instance, instance])

    assert sum(o.chained for o in outcomes) == 200
    assert sum(o.already_committed for o in outcomes) == 200
    chained_ids = set()
    for tenant in ("tenant-0", "tenant-1", "tenant-2"):
        chain = chain_of(database_url, tenant)
        assert verify_chain(tenant, chain).valid
        chained_ids |= {r["audit_id"] for r in chain[1:]}
    produced = {json.loads(m.value)["audit_id"] for b in batches for m in b if m.value}
    assert chained_ids == produced


def test_verify_reads_the_head_and_the_records_from_one_snapshot(database_url: str) -> None:
    # `verify` runs while the daemon appends: records committed after the head was read
    # must not look like a forged tail (the dev stack showed intermittent false breaks).
    engine = create_engine(database_url)
    try:
        commit_batch(engine, _messages("tenant-v", 0, 0, 5), GROUP, LIMITS)
        head, rows = AuditReader(engine).read_chain_rows("tenant-v")
        records = map(record_of, rows)
        commit_batch(engine, _messages("tenant-v", 0, 5, 5), GROUP, LIMITS)

        result = verify_chain("tenant-v", records, expected_head=head)
    finally:
        engine.dispose()

    assert head.last_sequence == 5
    assert result.valid, result.first_break
    assert result.last_sequence == 5
    assert len(chain_of(database_url, "tenant-v")) == 11
