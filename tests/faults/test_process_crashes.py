"""Process crashes (issue 5): `kill -9` at random moments over a 20,000-event stream, and
SIGTERM while a batch is in flight. The verifier and an exact per-audit_id count judge.

Nothing here stops a server, so the session's PostgreSQL and broker are used.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text
from support import (
    ServiceProcess,
    ServiceProcesses,
    StreamProducer,
    assert_each_exactly_once,
    chained_at_least,
    chained_count,
    fault_settings,
    scalar,
    service_processes,
    verify_ok,
)

pytestmark = pytest.mark.slow

KILLS = 10
TERMS = 2
EVENTS = 20_000
WAVE_S = 1.5
"""Each incarnation's share of the stream is produced over this long, while it runs."""
MAX_KILL_DELAY_S = 1.0
"""Odd rounds signal at a random moment up to this long after the incarnation's first
commit; even rounds as soon as a batch transaction is seen open."""
PROGRESS_TIMEOUT_S = 30.0
"""Start + group join (the killed member's session must expire first) + first commit."""
DRAIN_TIMEOUT_S = 90.0
TENANTS = [f"tenant-crash-{index}" for index in range(8)]
OPEN_TRANSACTION_WAIT_S = 2.0
OPEN_TRANSACTION = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = 'audit-service' AND xact_start IS NOT NULL AND state <> 'idle'")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[ServiceProcesses]:
    yield from service_processes(tmp_path)


def _stored_offset_total(database_url: str) -> int:
    return int(scalar(database_url, "SELECT coalesce(sum(next_offset), 0) "
                                    "FROM audit_consumer_offsets"))


def _await_open_transaction(watcher: Connection) -> bool:
    """Spin (bounded) until the daemon's batch transaction is open; False if none came."""
    deadline = time.monotonic() + OPEN_TRANSACTION_WAIT_S
    while time.monotonic() < deadline:
        if watcher.execute(OPEN_TRANSACTION).scalar():
            return True
    return False


def _signal_at_a_risky_moment(daemon: ServiceProcess, action: str, number: int,
                              rng: random.Random, watcher: Connection) -> str:
    """SIGKILL (or SIGTERM, which must exit 0 in time) the daemon; odd rounds after a
    random delay, even rounds as soon as a batch transaction is open. Returns the moment."""
    if number % 2:
        delay_s = rng.uniform(0.0, MAX_KILL_DELAY_S)
        time.sleep(delay_s)
        moment = f"+{delay_s:.2f}s"
    else:
        moment = "in-tx" if _await_open_transaction(watcher) else "no-tx-seen"
    if action == "kill":
        daemon.signal(signal.SIGKILL)
        daemon.wait()
    else:
        assert daemon.stop() == 0, daemon.tail()
    return moment


def test_kill_9_at_random_moments_over_a_20000_event_stream_loses_and_duplicates_nothing(
    database_url: str, kafka_bootstrap: str, topic: str, daemons: ServiceProcesses,
    tmp_path: Path,
) -> None:
    settings = fault_settings(database_url, kafka_bootstrap, topic)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    actions = ["kill"] * KILLS + ["term"] * TERMS
    rng.shuffle(actions)
    per_wave = -(-EVENTS // len(actions))
    waves: list[StreamProducer] = []
    history: list[str] = []

    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")  # fresh stats per query
    try:
        with engine.connect() as watcher:
            for number, action in enumerate(actions, start=1):
                wave = StreamProducer(kafka_bootstrap, topic, TENANTS,
                                      min(per_wave, EVENTS - sum(w.total for w in waves)),
                                      WAVE_S, reject_every=101, chunk=50)
                waves.append(wave)
                before = chained_count(database_url)
                wave.start()
                daemon = daemons.start(settings)
                daemon.wait_for(chained_at_least(database_url, before + 1), PROGRESS_TIMEOUT_S,
                                f"progress of incarnation {number} (seed {seed})")
                moment = _signal_at_a_risky_moment(daemon, action, number, rng, watcher)
                history.append(f"{number}:{action}{moment}@{chained_count(database_url)}")
                wave.finish()
    finally:
        engine.dispose()

    final = daemons.start(settings, "--exit-when-idle")
    assert final.wait(DRAIN_TIMEOUT_S) == 0, final.tail()

    context = f" (seed {seed}; {' '.join(history)})"
    produced = {tenant: [i for w in waves for i in w.produced[tenant]] for tenant in TENANTS}
    rejected = set().union(*(w.rejected for w in waves))
    tally = assert_each_exactly_once(database_url, produced, rejected, context)
    assert tally.produced == EVENTS
    assert _stored_offset_total(database_url) == EVENTS, context
    verify_ok(database_url, tmp_path)
    print(f"SCENARIO kill -9 x{KILLS} + SIGTERM x{TERMS}: {tally.summary()}{context}")


def _batch_waits_for_a_lock(database_url: str) -> Callable[[], bool | None]:
    return lambda: True if scalar(
        database_url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'audit-service' AND wait_event_type = 'Lock'") else None


def test_sigterm_while_a_batch_is_in_flight_commits_or_rolls_it_back_and_exits_0(
    database_url: str, kafka_bootstrap: str, topic: str, daemons: ServiceProcesses,
    tmp_path: Path,
) -> None:
    """The batch is held inside its transaction by another session's lock on every head:
    once released right after the signal (the batch commits on the way out), once held
    until the lock timeout ends it (the batch rolls back and is consumed again later)."""
    # A short lock timeout ends the rolled-back round sooner (it still exceeds the signal).
    settings = fault_settings(database_url, kafka_bootstrap, topic)
    lock_timeout = {"AUDIT_LOCK_TIMEOUT_MS": "2000"}
    tenants = TENANTS[:4]
    waves = [StreamProducer(kafka_bootstrap, topic, tenants, 4, 0.0)]
    waves[0].start()
    waves[0].finish()
    first = daemons.start(settings)
    first.wait_for(chained_at_least(database_url, 4), PROGRESS_TIMEOUT_S, "every tenant's head")
    assert first.stop() == 0, first.tail()

    engine = create_engine(database_url)
    try:
        for release_after_signal in (True, False):
            wave = StreamProducer(kafka_bootstrap, topic, tenants, 2000, 0.0)
            waves.append(wave)
            with engine.connect() as other_instance:
                locks = other_instance.begin()
                other_instance.execute(text("SELECT * FROM audit_chain_state FOR UPDATE"))
                wave.start()
                wave.finish()
                daemon = daemons.start(settings, **lock_timeout)
                daemon.wait_for(_batch_waits_for_a_lock(database_url), PROGRESS_TIMEOUT_S,
                                "a batch blocked inside its transaction")
                daemon.signal(signal.SIGTERM)
                if release_after_signal:
                    time.sleep(0.2)
                    locks.rollback()
                    assert daemon.wait() == 0, daemon.tail()
                else:
                    assert daemon.wait() == 0, daemon.tail()
                    locks.rollback()
    finally:
        engine.dispose()

    final = daemons.start(settings, "--exit-when-idle")
    assert final.wait(DRAIN_TIMEOUT_S) == 0, final.tail()
    produced = {tenant: [i for w in waves for i in w.produced[tenant]] for tenant in tenants}
    tally = assert_each_exactly_once(database_url, produced)
    assert _stored_offset_total(database_url) == tally.produced
    verify_ok(database_url, tmp_path)
    print(f"SCENARIO SIGTERM during a blocked batch (released / rolled back): "
          f"{tally.summary()}")
