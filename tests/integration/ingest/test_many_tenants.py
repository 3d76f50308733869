"""Batches that touch thousands of tenants: the heads are read, locked and saved by
set-based statements (one each per batch), so they must stay right for every tenant of a
batch, new or known, and keep two writers over overlapping tenants free of deadlocks."""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import create_engine, text
from support import records_of, reference_root, wire_event
from test_concurrency import GROUP, LIMITS, _in_parallel

from audit_service.core.chain import verify_chain
from audit_service.core.merkle import CompactRange
from audit_service.core.messages import ConsumedMessage
from audit_service.core.outcomes import BatchOutcome
from audit_service.ingest.batch import commit_batch
from audit_service.storage.reader import AuditReader


def _batch(tenants: list[str], partition: int, first_offset: int) -> list[ConsumedMessage]:
    return [
        ConsumedMessage("audit.events", partition, first_offset + index, tenant.encode(),
                        json.dumps(wire_event(tenant)).encode())
        for index, tenant in enumerate(tenants)
    ]


def _heads(database_url: str) -> dict[str, tuple[int, str, int, bytes]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT tenant_id, last_sequence, last_hash, merkle_range FROM audit_chain_state"
            )).all()
    finally:
        engine.dispose()
    return {tenant: (sequence, last, len(rows), bytes(tree)) for tenant, sequence, last, tree
            in rows}


def test_one_batch_of_known_and_new_tenants_saves_every_head_and_tree(
    database_url: str,
) -> None:
    known = [f"tenant-k{n:04d}" for n in range(600)]
    new = [f"tenant-n{n:04d}" for n in range(1400)]
    engine = create_engine(database_url)
    try:
        # Known tenants get chains of different lengths first (1 to 3 events).
        offset = 0
        for round_ in range(3):
            batch = _batch(known[: 200 * (3 - round_)], 0, offset)
            commit_batch(engine, batch, GROUP, LIMITS)
            offset += len(batch)
        mixed = [t for pair in zip(known, new, strict=False) for t in pair] + new[600:]
        outcome = commit_batch(engine, _batch(mixed, 0, offset), GROUP, LIMITS)
        reader = AuditReader(engine)
        chains = {tenant: records_of(reader, tenant) for tenant in known + new}
    finally:
        engine.dispose()

    assert outcome.chained == 2000 and outcome.genesis == 1400
    assert len(outcome.tenants) == 2000
    heads = _heads(database_url)
    assert len(heads) == 2000
    for tenant, chain in chains.items():
        assert verify_chain(tenant, chain).valid, tenant
        sequence, last_hash, _, stored_range = heads[tenant]
        assert (sequence, last_hash) == (chain[-1]["sequence_number"], chain[-1]["record_hash"])
        leaves = [bytes.fromhex(record["record_hash"]) for record in chain]
        tree = CompactRange.from_bytes(len(leaves), stored_range)
        assert tree.root() == reference_root(leaves), tenant
    assert {len(chains[t]) for t in known} == {3, 4, 5}
    assert {len(chains[t]) for t in new} == {2}


def test_two_writers_over_overlapping_tenant_sets_neither_deadlock_nor_fork(
    database_url: str,
) -> None:
    # Writer A's batches cover tenants 0..999, writer B's 500..1499, in opposite orders
    # within the batch: only the sorted lock order keeps them from deadlocking.
    tenants = [f"tenant-o{n:04d}" for n in range(1500)]
    rounds = 4

    def writer(partition: int, chosen: list[str]) -> Callable[..., BatchOutcome]:
        def job(engine: object) -> BatchOutcome:
            total = BatchOutcome()
            for round_ in range(rounds):
                batch = _batch(chosen, partition, round_ * len(chosen))
                outcome = commit_batch(engine, batch, GROUP, LIMITS)  # type: ignore[arg-type]
                total.chained += outcome.chained
                total.genesis += outcome.genesis
            return total
        return job

    outcomes = _in_parallel(database_url, [
        writer(0, tenants[:1000]), writer(1, list(reversed(tenants[500:])))])

    assert sum(o.chained for o in outcomes) == 2 * rounds * 1000
    assert sum(o.genesis for o in outcomes) == 1500
    engine = create_engine(database_url)
    try:
        reader = AuditReader(engine)
        lengths = {}
        for tenant in tenants[::50] + tenants[495:505] + tenants[-1:]:
            chain = records_of(reader, tenant)
            assert verify_chain(tenant, chain).valid, tenant
            lengths[tenant] = len(chain)
    finally:
        engine.dispose()
    # One genesis each; 4 events from each writer that covers the tenant.
    assert lengths["tenant-o0000"] == 1 + rounds
    assert lengths["tenant-o0500"] == 1 + 2 * rounds
    assert lengths["tenant-o1499"] == 1 + rounds
