"""The story's acceptance criteria end to end: Kafka -> daemon -> PostgreSQL -> verify."""

from __future__ import annotations

import threading

from sqlalchemy import create_engine
from support import chain_of, produce, produce_events, run_until_idle, wire_event

from audit_service.auditing.verification import verify_database
from audit_service.config import Settings
from audit_service.core.chain import GENESIS_PREVIOUS_HASH, compute_record_hash, verify_chain
from audit_service.storage.reader import AuditReader


def _assert_linked(chain: list[dict]) -> None:
    for index, record in enumerate(chain):
        assert record["sequence_number"] == index
        assert record["record_hash"] == compute_record_hash(record)
        if index:
            assert record["previous_hash"] == chain[index - 1]["record_hash"]


def _all_chains_valid(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        results = list(verify_database(AuditReader(engine)))
    finally:
        engine.dispose()
    broken = [r.first_break.describe() for r in results if r.first_break]
    assert not broken, broken
    return sum(r.records_checked for r in results)


def test_event_gets_next_sequence_and_links_to_previous_record(
    settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    events = [wire_event("tenant-a") for _ in range(3)]
    produce_events(kafka_bootstrap, topic, events)

    totals = run_until_idle(settings)

    chain = chain_of(settings.database_url, "tenant-a")
    assert totals.chained == 3
    assert [r["audit_id"] for r in chain[1:]] == [e["audit_id"] for e in events]
    _assert_linked(chain)


def test_new_tenant_gets_a_genesis_record_first(
    settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    produce_events(kafka_bootstrap, topic, [wire_event("tenant-new")])

    run_until_idle(settings)

    genesis, first = chain_of(settings.database_url, "tenant-new")
    assert genesis["sequence_number"] == 0
    assert genesis["previous_hash"] == GENESIS_PREVIOUS_HASH
    assert genesis["event_type"] == "system.genesis"
    assert genesis["audit_id"] == "00000000-0000-0000-0000-000000000000"
    assert (first["sequence_number"], first["previous_hash"]) == (1, genesis["record_hash"])


def test_hundred_rapid_events_are_chained_without_gaps(
    settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    events = [wire_event("tenant-burst") for _ in range(100)]
    produce_events(kafka_bootstrap, topic, events)

    run_until_idle(settings)

    chain = chain_of(settings.database_url, "tenant-burst")
    assert [r["sequence_number"] for r in chain] == list(range(101))
    assert [r["audit_id"] for r in chain[1:]] == [e["audit_id"] for e in events]
    assert verify_chain("tenant-burst", chain).valid


def test_two_tenants_emitting_concurrently_get_independent_chains(
    settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    produced: dict[str, list[str]] = {"tenant-x": [], "tenant-y": []}

    def emit(tenant: str) -> None:
        events = [wire_event(tenant, actor_id=f"{tenant}-actor") for _ in range(60)]
        produced[tenant] = [e["audit_id"] for e in events]
        for start in range(0, 60, 10):
            produce_events(kafka_bootstrap, topic, events[start:start + 10])

    threads = [threading.Thread(target=emit, args=(t,)) for t in produced]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    run_until_idle(settings)

    for tenant, audit_ids in produced.items():
        chain = chain_of(settings.database_url, tenant)
        assert [r["audit_id"] for r in chain[1:]] == audit_ids
        assert {r["tenant_id"] for r in chain} == {tenant}
        assert {r["actor_id"] for r in chain[1:]} == {f"{tenant}-actor"}
        _assert_linked(chain)
    assert _all_chains_valid(settings.database_url) == 122


def test_reproducing_the_same_audit_ids_adds_nothing(
    settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    events = [wire_event("tenant-r") for _ in range(20)]
    produce_events(kafka_bootstrap, topic, events)
    run_until_idle(settings)
    before = chain_of(settings.database_url, "tenant-r")

    produce_events(kafka_bootstrap, topic, events)
    totals = run_until_idle(settings)

    assert (totals.chained, totals.duplicates, totals.rejected) == (0, 20, 0)
    assert chain_of(settings.database_url, "tenant-r") == before


def test_replaying_the_topic_from_the_start_adds_nothing(
    settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    produce_events(kafka_bootstrap, topic, [wire_event("tenant-p") for _ in range(30)])
    produce(kafka_bootstrap, topic, [(b"tenant-p", b"not json")])
    run_until_idle(settings)
    before = chain_of(settings.database_url, "tenant-p")

    # A new consumer group has no stored offsets: the whole topic is redelivered.
    replay = settings.model_copy(update={"consumer_group": settings.consumer_group + "-replay"})
    totals = run_until_idle(replay)

    assert totals.chained == 0
    assert totals.duplicates == 30
    assert chain_of(settings.database_url, "tenant-p") == before
    assert _all_chains_valid(settings.database_url) == 31


def test_a_second_run_resumes_from_the_offsets_stored_in_the_database(
    settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    produce_events(kafka_bootstrap, topic, [wire_event("tenant-s") for _ in range(10)])
    run_until_idle(settings)
    produce_events(kafka_bootstrap, topic, [wire_event("tenant-s") for _ in range(5)])

    totals = run_until_idle(settings)

    assert (totals.chained, totals.duplicates) == (5, 0)
    assert len(chain_of(settings.database_url, "tenant-s")) == 16
