"""`audit-service reconcile` against a real broker and PostgreSQL (SPEC section 9).

The tamper cases are what someone with owner rights could do without `verify` noticing:
as a superuser with the append-only triggers bypassed (session_replication_role =
replica), change, delete or forge rows and rehash the chain so it verifies again. Only the
topic still shows what was sent, and reconcile must name the offset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from kafka import KafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, delete, insert, select, text, update
from sqlalchemy.orm import Session
from support import (
    ServiceProcesses,
    StreamProducer,
    chained_count,
    encode,
    produce,
    run_until_idle,
    scalar,
    service_processes,
    wire_event,
)

from audit_service.cli import main
from audit_service.config import Settings
from audit_service.core.chain import ChainHead, advance, compute_record_hash
from audit_service.core.record_mapping import record_from_row, row_values
from audit_service.ingest.daemon import Daemon
from audit_service.storage.models import AuditChainState, AuditRecord

TENANT = "tenant-r"
OTHER = "tenant-s"
PARTITION = 0
CONCURRENT_EVENTS = 6000
CONCURRENT_SECONDS = 12.0
DAEMON_TIMEOUT_S = 60.0


def _reconcile(settings: Settings, *args: str) -> Result:
    env = {"AUDIT_DATABASE_URL": settings.database_url,
           "AUDIT_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "AUDIT_KAFKA_TOPIC": settings.kafka_topic,
           "AUDIT_CONSUMER_GROUP": settings.consumer_group}
    return CliRunner().invoke(main, ["reconcile", *args], env=env)


def _report(settings: Settings, expect_exit: int, *args: str) -> dict[str, Any]:
    result = _reconcile(settings, "--json", *args)
    assert result.exit_code == expect_exit, result.output
    return json.loads(result.stdout)


def _findings(report: dict[str, Any]) -> list[tuple[str, int | None, int | None]]:
    return [(f["kind"], f["partition"], f["offset"]) for f in report["findings"]]


def _verify_exit(settings: Settings) -> int:
    result = CliRunner().invoke(main, ["verify"], env={"AUDIT_DATABASE_URL": settings.database_url})
    return result.exit_code


def _bad_messages(duplicate_of: dict[str, Any]) -> list[tuple[bytes | None, bytes | None]]:
    key = TENANT.encode()
    return [
        (key, b'{"audit_id": "\xff\xfe"}'),  # not UTF-8
        (key, b'{"audit_id": '),  # not JSON
        (key, b'["an", "array"]'),  # not an object
        (key, json.dumps(wire_event(TENANT, actor_type="robot")).encode()),  # schema
        (key, json.dumps(wire_event(TENANT, surprise=True)).encode()),  # unknown field
        (b"tenant-other", json.dumps(wire_event(TENANT)).encode()),  # key mismatch
        (key, json.dumps(wire_event(TENANT, event_type="system.genesis")).encode()),  # reserved
        (key, None),  # tombstone
        (key, json.dumps({**duplicate_of, "actor_id": "someone-else"}).encode()),  # conflict
    ]


@pytest.fixture
def stored(settings: Settings, kafka_bootstrap: str, topic: str) -> dict[str, Any]:
    """Partition 0: valid events of two tenants, every kind of bad input, redeliveries;
    all chained or rejected by the daemon. Returns what was sent at which offset."""
    events = [wire_event(TENANT) for _ in range(6)] + [wire_event(OTHER) for _ in range(3)]
    bad = _bad_messages(events[0])
    redelivered = [encode(events[1]), encode(events[7])]
    messages = [encode(e) for e in events] + bad + redelivered
    produce(kafka_bootstrap, topic, messages, partition=PARTITION)
    totals = run_until_idle(settings)
    assert (totals.chained, totals.rejected, totals.duplicates) == (9, 9, 2)
    return {"events": events, "offsets": {e["audit_id"]: i for i, e in enumerate(events)},
            "bad_offsets": list(range(len(events), len(events) + len(bad))),
            "messages": len(messages)}


def test_a_stream_with_bad_input_and_redeliveries_reconciles_clean(
    settings: Settings, stored: dict[str, Any]
) -> None:
    report = _report(settings, 0)

    assert report["ok"] and report["findings"] == []
    totals = report["totals"]
    assert (totals["scanned"], totals["chained"], totals["rejected"], totals["redelivered"],
            totals["pending"], totals["findings"]) == (stored["messages"], 9, 9, 2, 0, 0)
    assert [p["partition"] for p in report["partitions"]] == [0, 1, 2, 3]
    row = _last_log_row(settings)
    assert (row["ok"], row["findings"], row["counts"]["chained"], row["error"]) == (
        True, 0, 9, None)
    status = _status(settings)
    assert status[0]["last_reconciliation"]["ok"] is True
    assert _daemon_metric(settings, "audit_reconciliation_findings") == 0
    assert status[1].endswith(f", 4 partitions, {stored['messages']} messages, "
                              "all accounted for")


def test_text_output_has_a_table_and_a_verdict(settings: Settings, stored: dict[str, Any]) -> None:
    result = _reconcile(settings)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PARTITION", "LOG", "START", "STORED", "OFFSET", "LOG", "END",
                                "SCANNED", "CHAINED", "REJECTED", "REDELIVERED", "PENDING",
                                "FINDINGS"]
    assert lines[1].split() == ["0", "0", str(stored["messages"]), str(stored["messages"]),
                                str(stored["messages"]), "9", "9", "2", "0", "0"]
    assert lines[-1].startswith(f"reconcile: OK, 4 partitions, {stored['messages']} messages "
                                "accounted for (9 chained, 9 rejected, 2 redelivered), 0 pending")


def _status(settings: Settings) -> tuple[dict[str, Any], str]:
    """`status --json` and the last-reconciliation line of `status`."""
    env = {"AUDIT_DATABASE_URL": settings.database_url,
           "AUDIT_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "AUDIT_KAFKA_TOPIC": settings.kafka_topic}
    as_json = CliRunner().invoke(main, ["status", "--json"], env=env)
    as_text = CliRunner().invoke(main, ["status"], env=env)
    assert as_json.exit_code == as_text.exit_code == 0, as_json.output + as_text.output
    [line] = [line for line in as_text.stdout.splitlines()
              if line.startswith("last reconciliation: ")]
    return json.loads(as_json.stdout), line


def _daemon_metric(settings: Settings, name: str) -> float:
    """One sample of a daemon's /metrics exposition (the daemon is built, not run)."""
    daemon = Daemon(settings)
    try:
        body, _ = daemon.metrics.exposition()
    finally:
        daemon.engine.dispose()
        daemon.observer_engine.dispose()
    [value] = [sample.value for family in text_string_to_metric_families(body.decode())
               for sample in family.samples if sample.name == name]
    return value


def _last_log_row(settings: Settings) -> dict[str, Any]:
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(text(
                "SELECT * FROM audit_reconciliation_log ORDER BY id DESC LIMIT 1")).one()
            return dict(row._mapping)
    finally:
        engine.dispose()


# --- tampering: what a superuser could do so that plain verify still passes ----------------

Rows = list[tuple[dict[str, Any], tuple[str | None, int | None, int | None]]]
"""A tenant's records (hashed dicts) with their (topic, partition, offset)."""


def _rewrite_chain(database_url: str, tenant: str, edit: Callable[[Rows], Rows]) -> None:
    """Replace a tenant's records by `edit(records)`, renumbered and rehashed from genesis,
    and move its head: a forgery the chain alone cannot reveal."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            session.execute(text("SET LOCAL session_replication_role = replica"))
            stored = session.scalars(select(AuditRecord).where(AuditRecord.tenant_id == tenant)
                                     .order_by(AuditRecord.sequence_number)).all()
            rows: Rows = [(record_from_row(r), (r.kafka_topic, r.kafka_partition, r.kafka_offset))
                          for r in stored]
            session.expunge_all()
            session.execute(delete(AuditRecord).where(AuditRecord.tenant_id == tenant))
            head, values = ChainHead.empty(tenant), []
            for sequence, (record, coordinates) in enumerate(edit(rows)):
                record = {**record, "sequence_number": sequence, "previous_hash": head.last_hash}
                record["record_hash"] = compute_record_hash(record)
                values.append(row_values(record, *coordinates))
                head = advance(head, record)
            session.execute(insert(AuditRecord), values)
            session.execute(update(AuditChainState).where(AuditChainState.tenant_id == tenant)
                            .values(last_sequence=head.last_sequence, last_hash=head.last_hash))
    finally:
        engine.dispose()


def _as_superuser(database_url: str, statement: str, **params: Any) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("SET LOCAL session_replication_role = replica"))
            connection.execute(text(statement), params)
    finally:
        engine.dispose()


def test_a_changed_and_rehashed_record_is_found_at_its_offset(
    settings: Settings, stored: dict[str, Any]
) -> None:
    target = stored["events"][3]

    def change(rows: Rows) -> Rows:
        return [({**r, "actor_id": "mallory"} if r["audit_id"] == target["audit_id"] else r, c)
                for r, c in rows]

    _rewrite_chain(settings.database_url, TENANT, change)
    assert _verify_exit(settings) == 0

    report = _report(settings, 1)

    offset = stored["offsets"][target["audit_id"]]
    assert _findings(report) == [("altered", PARTITION, offset)]
    [finding] = report["findings"]
    assert (finding["tenant_id"], finding["audit_id"], finding["sequence_number"]) == (
        TENANT, target["audit_id"], 4)
    assert 'actor_id: message "triage-agent", stored "mallory"' in finding["detail"]
    row = _last_log_row(settings)
    assert (row["ok"], row["findings"]) == (False, 1)
    assert row["finding_details"][0]["offset"] == offset
    assert _status(settings)[1].endswith(
        ", 4 partitions, 1 FINDINGS (see audit_reconciliation_log)")
    assert _daemon_metric(settings, "audit_reconciliation_findings") == 1


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_a_deleted_record_with_the_rest_renumbered_is_found(
    settings: Settings, stored: dict[str, Any], jobs: str
) -> None:
    target = stored["events"][2]
    _rewrite_chain(settings.database_url, TENANT,
                   lambda rows: [(r, c) for r, c in rows if r["audit_id"] != target["audit_id"]])
    assert _verify_exit(settings) == 0

    report = _report(settings, 1, "--jobs", jobs)

    assert _findings(report) == [("missing", PARTITION, stored["offsets"][target["audit_id"]])]
    assert report["findings"][0]["audit_id"] == target["audit_id"]
    assert "neither stored at these coordinates nor chained" in report["findings"][0]["detail"]


def test_a_deleted_rejects_row_is_found(settings: Settings, stored: dict[str, Any]) -> None:
    offset = stored["bad_offsets"][1]  # the message that is not JSON
    _as_superuser(settings.database_url, 'DELETE FROM audit_rejected_events WHERE "offset" = :o',
                  o=offset)

    report = _report(settings, 1)

    assert _findings(report) == [("missing", PARTITION, offset)]
    assert "not a valid event (value is not valid JSON" in report["findings"][0]["detail"]


def test_a_forged_record_with_coordinates_of_its_own_is_an_orphan(
    settings: Settings, stored: dict[str, Any]
) -> None:
    forged_offset = stored["messages"] + 5

    def forge(rows: Rows) -> Rows:
        record, (topic, _, _) = rows[-1]
        extra = {**record, "audit_id": "99999999-9999-4999-8999-999999999999",
                 "actor_id": "mallory"}
        return [*rows, (extra, (topic, PARTITION, forged_offset))]

    _rewrite_chain(settings.database_url, OTHER, forge)
    assert _verify_exit(settings) == 0

    report = _report(settings, 1)

    assert _findings(report) == [("orphan_record", PARTITION, forged_offset)]
    assert report["findings"][0]["sequence_number"] == 4
    assert "beyond the stored offset" in report["findings"][0]["detail"]


def test_a_forged_record_in_a_gap_and_one_without_coordinates_are_orphans(
    settings: Settings, stored: dict[str, Any]
) -> None:
    def forge(rows: Rows) -> Rows:
        record, (topic, _, _) = rows[-1]
        placed = {**record, "audit_id": "99999999-9999-4999-8999-999999999998"}
        unplaced = {**record, "audit_id": "99999999-9999-4999-8999-999999999997"}
        # Offset 2 holds a chained message already: the forged row is a second one there.
        return [*rows, (placed, (topic, PARTITION, 2)), (unplaced, (None, None, None))]

    _rewrite_chain(settings.database_url, OTHER, forge)

    report = _report(settings, 1)

    assert sorted(_findings(report), key=str) == sorted(
        [("orphan_record", PARTITION, 2), ("orphan_record", None, None)], key=str)


def test_a_stopped_daemon_s_backlog_is_pending_not_a_finding(
    settings: Settings, stored: dict[str, Any], kafka_bootstrap: str, topic: str
) -> None:
    backlog = [wire_event(TENANT) for _ in range(7)]
    produce(kafka_bootstrap, topic, [encode(e) for e in backlog], partition=PARTITION)
    produce(kafka_bootstrap, topic, [encode(wire_event(OTHER))], partition=2)

    report = _report(settings, 0)

    by_partition = {p["partition"]: p for p in report["partitions"]}
    assert (by_partition[0]["pending"], by_partition[0]["scanned"]) == (7, stored["messages"])
    assert (by_partition[2]["pending"], by_partition[2]["scanned"]) == (1, 0)
    assert report["totals"]["pending"] == 8 and report["findings"] == []


def test_only_the_partitions_asked_for_are_reconciled(
    settings: Settings, stored: dict[str, Any]
) -> None:
    report = _report(settings, 0, "--partition", "2", "--partition", "0")

    assert [p["partition"] for p in report["partitions"]] == [0, 2]
    assert _reconcile(settings, "--partition", "9").exit_code == 2


def test_an_unreachable_broker_is_exit_2_and_logged(
    settings: Settings, stored: dict[str, Any]
) -> None:
    unreachable = settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})

    result = _reconcile(unreachable)

    assert result.exit_code == 2
    assert result.output.startswith("audit-service: error: ") and "Traceback" not in result.output
    row = _last_log_row(settings)
    assert row["ok"] is False and row["error"]
    assert "did not finish: " in _status(settings)[1]


# --- a running daemon ------------------------------------------------------------------------

@pytest.fixture
def daemons(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield from service_processes(tmp_path)


def _group_offsets(bootstrap: str, group: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {tp.partition: meta.offset
                for tp, meta in admin.list_group_offsets(group)[group].items()}
    finally:
        admin.close()


def _groups(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {group["group_id"] for group in admin.list_groups()}
    finally:
        admin.close()


def test_the_daemon_keeps_committing_while_reconcile_runs(
    settings: Settings, kafka_bootstrap: str, topic: str, daemons: ServiceProcesses
) -> None:
    daemon = daemons.start(settings)
    producer = StreamProducer(kafka_bootstrap, topic, ["tenant-1", "tenant-2", "tenant-3"],
                              CONCURRENT_EVENTS, CONCURRENT_SECONDS, reject_every=50)
    producer.start()
    daemon.wait_for(lambda: chained_count(settings.database_url) or None, DAEMON_TIMEOUT_S,
                    "the daemon's first commit")
    runs = []
    while producer.is_alive():
        before = _stored_total(settings)
        # --jobs 2: the workers must see the parent's snapshot, or rows committed since
        # would lie beyond its stored offsets and count as orphans.
        report = _report(settings, 0, "--jobs", str(1 + len(runs) % 2))
        runs.append((before, report["totals"]["scanned"], _stored_total(settings)))
    producer.finish()
    daemon.wait_for(lambda: _stored_total(settings) == CONCURRENT_EVENTS or None,
                    DAEMON_TIMEOUT_S, "the daemon to catch up")

    assert len(runs) >= 2, runs
    # Each run scanned at least what was stored before it started, and the daemon went on
    # committing during the runs.
    assert all(scanned >= before for before, scanned, _ in runs), runs
    assert runs[-1][2] > runs[0][0], runs
    assert daemon.stop() == 0

    groups, offsets = _groups(kafka_bootstrap), _group_offsets(kafka_bootstrap,
                                                                settings.consumer_group)
    final = _report(settings, 0)
    assert final["totals"]["scanned"] == CONCURRENT_EVENTS and final["totals"]["pending"] == 0
    assert final["totals"]["rejected"] == CONCURRENT_EVENTS // 50
    assert settings.consumer_group in groups
    assert _groups(kafka_bootstrap) == groups  # reconcile joined no group
    assert _group_offsets(kafka_bootstrap, settings.consumer_group) == offsets


def _stored_total(settings: Settings) -> int:
    return int(scalar(settings.database_url,
                      "SELECT coalesce(sum(next_offset), 0) FROM audit_consumer_offsets "
                      "WHERE consumer_group = :g", g=settings.consumer_group))
