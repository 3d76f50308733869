"""Broker faults: the broker crashes mid-stream and comes back empty (issue 5).

Tansu keeps nothing on disk, so the restarted broker's log starts again at offset 0 while
PostgreSQL remembers offsets of the old one. Observed on Tansu (and why the daemon checks
ranges itself): a fetch beyond the end of the log returns no records and no error, with
the true high watermark; ListOffsets(latest) answers the start of the last record batch;
a subscription or a fetch silently re-creates the topic (4 partitions); the group is gone,
so the consumer re-joins within a few seconds of the broker's return. Before the offset
policy, a daemon sat silently at its old offset and, once the new log grew past it, went
on from there: the new log's first events were never chained.

The module runs its own broker (it is killed and restarted); PostgreSQL is the session's.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    ServiceProcess,
    ServiceProcesses,
    assert_each_exactly_once,
    chain_of,
    chained_at_least,
    chained_count,
    encode,
    fault_settings,
    http_status,
    produce,
    scalar,
    scratch_dir,
    service_processes,
    verify_ok,
    wire_event,
)

from audit_service.dev.devstack import TansuBroker, create_topic, free_port

pytestmark = pytest.mark.slow

PARTITIONS = 4
OUTAGE_S = 3.0
"""How long the broker stays down; the daemon must still be running afterwards."""
CATCH_UP_TIMEOUT_S = 60.0
"""Bound for a daemon to (re)join and chain what is on the topic."""
DETECT_TIMEOUT_S = 45.0
"""Bound for a daemon to notice, after the broker's return, that its offsets are gone."""


@pytest.fixture(scope="module")
def own_broker() -> Iterator[TansuBroker]:
    """A broker this module may kill and restart (memory only: a restart empties it)."""
    with scratch_dir("audit-faults-broker-") as path:
        broker = TansuBroker.start(log_path=path / "tansu.log")
        try:
            yield broker
        finally:
            broker.stop()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[ServiceProcesses]:
    yield from service_processes(tmp_path)


def _produce_per_partition(bootstrap: str, topic: str, tenants: list[str], per_tenant: int,
                           produced: dict[str, list[str]]) -> None:
    """`per_tenant` events for each tenant, tenant i on partition i."""
    for partition, tenant in enumerate(tenants):
        events = [wire_event(tenant) for _ in range(per_tenant)]
        produce(bootstrap, topic, (encode(event) for event in events), partition=partition)
        produced.setdefault(tenant, []).extend(event["audit_id"] for event in events)


def _stored_offsets(database_url: str, group: str) -> str:
    return str(scalar(database_url,
                      "SELECT string_agg(partition || ':' || next_offset, ' ' ORDER BY partition)"
                      " FROM audit_consumer_offsets WHERE consumer_group = :group", group=group))


def _crash_and_restart_empty(broker: TansuBroker, topic: str, daemon: ServiceProcess,
                             health_port: int) -> None:
    """Kill the broker, keep it down OUTAGE_S (the daemon must live through it, its loop
    turning), bring back an empty one and provision the topic as an operator would."""
    broker.kill()
    time.sleep(OUTAGE_S)
    assert daemon.running(), f"the daemon died with the broker\n{daemon.tail()}"
    assert http_status(health_port, "/health") == 200, daemon.tail()
    broker.restart()
    create_topic(broker.bootstrap, topic, partitions=PARTITIONS)


def _error_line(daemon: ServiceProcess) -> str:
    lines = [line for line in daemon.output().splitlines()
             if line.startswith("audit-service: error:")]
    assert len(lines) == 1, daemon.tail()
    return lines[0]


def test_an_emptied_broker_is_reported_then_resumed_only_by_an_explicit_policy(
    own_broker: TansuBroker, database_url: str, daemons: ServiceProcesses, tmp_path: Path,
) -> None:
    topic = f"audit.events.broker-{uuid.uuid4().hex[:8]}"
    create_topic(own_broker.bootstrap, topic, partitions=PARTITIONS)
    settings = fault_settings(database_url, own_broker.bootstrap, topic)
    tenants = [f"tenant-broker-{index}" for index in range(PARTITIONS)]
    produced: dict[str, list[str]] = {}
    port = free_port()

    # 1. A first stream, all chained; the broker then dies and comes back empty.
    _produce_per_partition(own_broker.bootstrap, topic, tenants, 250, produced)
    first = daemons.start(settings, AUDIT_HEALTH_PORT=str(port))
    first.wait_for(chained_at_least(database_url, 1000), CATCH_UP_TIMEOUT_S, "the first stream")
    _crash_and_restart_empty(own_broker, topic, first, port)
    _produce_per_partition(own_broker.bootstrap, topic, tenants, 100, produced)

    # 2. Default policy `fail`: exit 2 with one line naming every partition, skip nothing.
    #    (This daemon saw the topic's id change: the recreated topic is named as such.)
    assert first.wait(DETECT_TIMEOUT_S) == 2, first.tail()
    line = _error_line(first)
    for partition in range(PARTITIONS):
        assert (f"topic {topic!r} partition {partition}: stored offset 250 belongs to an "
                "earlier topic of that name") in line, line
    assert line.count("log [0, 100)") == PARTITIONS, line
    assert "on_offset_out_of_range" in line, line
    assert chained_count(database_url) == 1000
    assert _stored_offsets(database_url, settings.consumer_group) == "0:250 1:250 2:250 3:250"

    # 3. The operator chooses `earliest`: a fresh process, so only the offsets tell; an
    #    ERROR with the facts, the stored offsets moved to the new log's start, its events
    #    chained.
    second = daemons.start(settings, AUDIT_ON_OFFSET_OUT_OF_RANGE="earliest")
    second.wait_for(chained_at_least(database_url, 1400), CATCH_UP_TIMEOUT_S,
                    "the new log's events")
    moved = [line for line in second.output().splitlines()
             if " ERROR " in line and "stored offset 250 is beyond the end" in line]
    assert len(moved) == PARTITIONS, second.tail()
    assert second.stop() == 0, second.tail()

    # 4. A daemon on fixed partitions (no group, so no re-join to notice the new broker)
    #    lives through another crash, and the new log outgrows the stored offsets (100)
    #    before it could look: only the topic's new id gives it away.
    third = daemons.start(settings, AUDIT_ON_OFFSET_OUT_OF_RANGE="earliest",
                          AUDIT_KAFKA_PARTITIONS="0,1,2,3", AUDIT_HEALTH_PORT=str(port))
    third.wait_for(lambda: True if http_status(port, "/ready") == 200 else None,
                   CATCH_UP_TIMEOUT_S, "/ready")
    time.sleep(1.0)  # a few fetches at the stored offsets
    _crash_and_restart_empty(own_broker, topic, third, port)
    _produce_per_partition(own_broker.bootstrap, topic, tenants, 150, produced)
    third.wait_for(chained_at_least(database_url, 2000), DETECT_TIMEOUT_S,
                   "the third log's events")
    moved = [line for line in third.output().splitlines() if " ERROR " in line
             and re.search(r"stored offset (100|150) belongs to an earlier topic", line)]
    assert len(moved) == PARTITIONS, third.tail()
    assert third.stop() == 0, third.tail()

    # Tansu serves the first fetches after its return before the client's metadata shows
    # the new topic id, so offsets 100-149 of the new log may be chained before 0-99 (their
    # re-read counts as duplicates): nothing lost or doubled, but that window's order is not
    # the production order.
    tally = assert_each_exactly_once(database_url, produced, check_order=False)
    for tenant, audit_ids in produced.items():  # before that window, production order
        chain = [record["audit_id"] for record in chain_of(database_url, tenant)[1:]]
        assert chain[:350] == audit_ids[:350], tenant
    verify_ok(database_url, tmp_path)
    print(f"SCENARIO broker restarted twice (fail, earliest, fixed partitions): {tally.summary()}")
