"""Concurrency faults (issue 5): rebalances under load, and two daemons on the same tenant.

Two daemons share the consumer group over 4 partitions while one is killed and restarted
mid-stream; then two daemons are pinned to the same partition (`kafka_partitions`, no
group) so that both chain the same tenants at once. The offset and head row locks must
keep every chain linear: each event once, in order, whoever wins each race.

Nothing here stops a server, so the session's PostgreSQL and broker are used.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import (
    ServiceProcess,
    ServiceProcesses,
    StreamProducer,
    assert_each_exactly_once,
    chained_at_least,
    fault_settings,
    service_processes,
    verify_ok,
    wait_until,
)

pytestmark = pytest.mark.slow

JOIN_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 90.0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[ServiceProcesses]:
    yield from service_processes(tmp_path)


_BATCH = re.compile(r"batch committed .* chained=(\d+) .* skipped_committed=(\d+)")


def _batch_totals(daemon: ServiceProcess) -> tuple[int, int]:
    """(events chained, messages skipped as already committed) over the daemon's batches."""
    batches = [_BATCH.search(line) for line in daemon.output().splitlines()]
    found = [match for match in batches if match]
    return sum(int(m.group(1)) for m in found), sum(int(m.group(2)) for m in found)


def _placed(daemon: ServiceProcess) -> Callable[[], bool | None]:
    """A probe: True once the daemon has positioned partitions (joined and ready to fetch)."""
    return lambda: True if "partitions placed" in daemon.output() else None


def test_two_daemons_in_one_group_with_one_killed_and_restarted_under_load(
    database_url: str, kafka_bootstrap: str, topic: str, daemons: ServiceProcesses,
    tmp_path: Path,
) -> None:
    settings = fault_settings(database_url, kafka_bootstrap, topic)
    stream = StreamProducer(kafka_bootstrap, topic, [f"tenant-pair-{i}" for i in range(8)],
                            total=8000, duration_s=14.0, reject_every=97)
    first = daemons.start(settings)
    stream.start()
    second = daemons.start(settings)
    for daemon in (first, second):
        daemon.wait_for(_placed(daemon), JOIN_TIMEOUT_S, "a share of the partitions")
    time.sleep(1.5)
    first.signal(signal.SIGKILL)
    first.wait()
    # The survivor takes over every partition once the dead member's session expires ...
    second.wait_for(lambda: True if "partitions assigned partitions=[0, 1, 2, 3]"
                    in second.output() else None, JOIN_TIMEOUT_S, "the survivor's takeover")
    # ... and gives some back to the restarted daemon.
    restarted = daemons.start(settings)
    restarted.wait_for(_placed(restarted), JOIN_TIMEOUT_S, "the restarted daemon's share")
    # On a loaded machine the first stream can be over and drained by now: a tail to every
    # partition gives the restarted daemon's share work whatever the timing.
    stream.finish()
    tail = StreamProducer(kafka_bootstrap, topic, [f"tenant-tail-{i}" for i in range(8)],
                          total=400, duration_s=1.0)
    tail.start()
    tail.finish()
    wait_until(chained_at_least(database_url, stream.valid + tail.valid), DRAIN_TIMEOUT_S,
               "the whole stream", second)
    for daemon in (second, restarted):
        daemon.signal(signal.SIGTERM)
    for daemon in (second, restarted):
        assert daemon.wait() == 0, daemon.tail()

    tally = assert_each_exactly_once(database_url, stream.produced | tail.produced,
                                     stream.rejected)
    shares = [_batch_totals(d)[0] for d in (first, second, restarted)]
    assert all(shares), f"every daemon should have chained part of the stream: {shares}"
    verify_ok(database_url, tmp_path)
    print(f"SCENARIO 2 daemons, 1 group, one kill -9 + restart: {tally.summary()} "
          f"(chained per daemon {shares})")


def test_two_daemons_pinned_to_the_same_partition_keep_every_chain_linear(
    database_url: str, kafka_bootstrap: str, topic: str, daemons: ServiceProcesses,
    tmp_path: Path,
) -> None:
    settings = fault_settings(database_url, kafka_bootstrap, topic).model_copy(
        update={"batch_size": 100})
    tenants = ["tenant-shared-a", "tenant-shared-b"]
    stream = StreamProducer(kafka_bootstrap, topic, tenants, total=6000, duration_s=6.0,
                            partitions=1, reject_every=89, chunk=50)
    pinned = [daemons.start(settings, AUDIT_KAFKA_PARTITIONS="0") for _ in range(2)]
    for daemon in pinned:
        daemon.wait_for(_placed(daemon), JOIN_TIMEOUT_S, "partition 0 placed")
    stream.start()
    stream.finish()
    wait_until(chained_at_least(database_url, stream.valid), DRAIN_TIMEOUT_S,
               "the whole stream", pinned[0])
    for daemon in pinned:
        daemon.signal(signal.SIGTERM)
    for daemon in pinned:
        assert daemon.wait() == 0, daemon.tail()

    tally = assert_each_exactly_once(database_url, stream.produced, stream.rejected)
    totals = [_batch_totals(d) for d in pinned]
    assert all(chained for chained, _ in totals), f"both daemons must have chained: {totals}"
    assert sum(skipped for _, skipped in totals) > 0, f"the daemons never overlapped: {totals}"
    verify_ok(database_url, tmp_path)
    print(f"SCENARIO 2 daemons pinned to partition 0: {tally.summary()} "
          f"((chained, skipped as committed) per daemon {totals})")
