"""Acceptance: `audit-service` as a real process (SPEC sections 5 and 6, STYLE 9 and 10).

The CLI runs as `python -m audit_service ...` against the test's real PostgreSQL database
and Kafka topic, configured only through AUDIT_* environment variables. Daemons are
stopped with SIGTERM (clean stop) or SIGKILL (crash) and the store is then judged by the
verifier and by comparing each tenant's chain with what was produced. Every wait is
bounded, and every process a test starts is killed in teardown if it is still running.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import create_engine, text
from support import (
    FAULT_GROUP_TIMINGS,
    ServiceProcesses,
    chain_of,
    encode,
    produce,
    produce_events,
    rejections,
    run_until_idle,
    scalar,
    service_processes,
    wire_event,
)

from audit_service.config import Settings
from audit_service.dev.devstack import free_port

READY_TIMEOUT_S = 30.0
"""Process start + first consumer-group join (~3 s here) must fit well inside this."""
PROGRESS_TIMEOUT_S = 30.0
"""How long a (re)started daemon may take to chain its first new records."""
DRAIN_TIMEOUT_S = 90.0
"""Upper bound for `run --exit-when-idle` to consume what is left of a topic."""
CLI_TIMEOUT_S = 30.0
"""Upper bound for a short CLI command (verify, a refused run)."""
HTTP_TIMEOUT_S = 5.0

UNREACHABLE_DATABASE_URL = "postgresql+psycopg2://postgres:s3cret-pw@127.0.0.1:1/audit"
"""Nothing listens on port 1; the password must never appear in any output."""


# --- running the CLI -------------------------------------------------------------------


def _cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "audit_service", *args]


def _base_environ() -> dict[str, str]:
    """The caller's environment without AUDIT_* (an AUDIT_CONFIG would leak into the run)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("AUDIT_")}


def _run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A short CLI command to completion, bounded in time."""
    return subprocess.run(
        _cli_command(*args), env=env, cwd=cwd, capture_output=True, text=True,
        timeout=CLI_TIMEOUT_S, check=False,
    )


def _outputs(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def _daemon_environ(settings: Settings, **overrides: str) -> dict[str, str]:
    """AUDIT_* overrides of support.process_environ for this module's daemons: batch size
    100 and the `settings` fixture's group timings (6 s session, 10 s poll interval) instead
    of the fast FAULT_GROUP_TIMINGS, which only the SIGKILL test wants; then `overrides`."""
    return {
        "AUDIT_BATCH_SIZE": "100",
        "AUDIT_KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
        "AUDIT_KAFKA_HEARTBEAT_INTERVAL_MS": str(settings.kafka_heartbeat_interval_ms),
        "AUDIT_KAFKA_MAX_POLL_INTERVAL_MS": str(settings.kafka_max_poll_interval_ms),
        **overrides,
    }


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[ServiceProcesses]:
    # The working directory is tmp_path, so the repository's ./audit.ini is not read:
    # the run is configured by the environment alone.
    yield from service_processes(tmp_path)


# --- observing the daemon --------------------------------------------------------------


def _http(port: int, path: str, method: str = "GET") -> tuple[int, str, Any]:
    """(status, content type, parsed JSON body or None) of one request to the health server."""
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            status, headers, payload = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, headers, payload = exc.code, exc.headers, exc.read()
    content_type = headers.get("Content-Type", "") if headers else ""
    try:
        body = json.loads(payload) if payload else None
    except ValueError:
        body = None
    return status, content_type, body


def _ready_body(port: int) -> Callable[[], Any]:
    def probe() -> Any:
        try:
            status, _, body = _http(port, "/ready")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None  # not listening yet
        return body if status == 200 else None

    return probe


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _chained(database_url: str) -> int:
    """Event records in the store (genesis records excluded)."""
    return int(scalar(database_url, "SELECT count(*) FROM audit_records WHERE sequence_number > 0"))


def _chained_more_than(database_url: str, floor: int) -> Callable[[], int | None]:
    def probe() -> int | None:
        count = _chained(database_url)
        return count if count > floor else None

    return probe


def _stored_offsets(settings: Settings) -> dict[int, int]:
    """Next offset per partition as the database records it for the test's group and topic."""
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT partition, next_offset FROM audit_consumer_offsets "
                "WHERE consumer_group = :group AND topic = :topic"
            ), {"group": settings.consumer_group, "topic": settings.kafka_topic}).all()
    finally:
        engine.dispose()
    return {int(partition): int(offset) for partition, offset in rows}


def _kafka_committed_offsets(settings: Settings, partitions: list[int]) -> dict[int, int]:
    """The group's offsets as committed to the broker (read without joining the group)."""
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": settings.consumer_group,
        "enable.auto.commit": False,
    })
    try:
        committed = consumer.committed(
            [TopicPartition(settings.kafka_topic, p) for p in partitions], timeout=10
        )
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}


def _produce_round_robin(
    bootstrap: str, topic: str, tenants: list[str], count: int,
    produced: dict[str, list[str]],
) -> None:
    """`count` valid events spread over `tenants`, keyed (so partitioned) by tenant;
    appends each audit_id to `produced` in production order."""
    events = [wire_event(tenants[index % len(tenants)]) for index in range(count)]
    produce_events(bootstrap, topic, events)
    for event in events:
        produced.setdefault(event["tenant_id"], []).append(event["audit_id"])


def _produce_one_partition_per_tenant(
    bootstrap: str, topic: str, tenants: list[str], per_tenant: int,
    produced: dict[str, list[str]],
) -> None:
    """`per_tenant` events for each tenant, tenant i on partition i (whatever the client's
    partitioner would pick), so every partition has work; appends to `produced`."""
    for partition, tenant in enumerate(tenants):
        events = [wire_event(tenant) for _ in range(per_tenant)]
        produce(bootstrap, topic, (encode(event) for event in events), partition=partition)
        produced.setdefault(tenant, []).extend(event["audit_id"] for event in events)


def _assert_chains_hold_exactly(
    database_url: str, produced: dict[str, list[str]], context: str = ""
) -> None:
    """Each tenant's chain is genesis + its produced audit_ids, once each, in order."""
    for tenant, audit_ids in produced.items():
        chain = chain_of(database_url, tenant)
        chained_ids = [record["audit_id"] for record in chain[1:]]
        missing = set(audit_ids) - set(chained_ids)
        extra = set(chained_ids) - set(audit_ids)
        duplicated = len(chained_ids) - len(set(chained_ids))
        assert (len(missing), len(extra), duplicated) == (0, 0, 0), (
            f"{tenant}: {len(missing)} missing, {len(extra)} unexpected, {duplicated} "
            f"duplicated of {len(audit_ids)} produced{context}")
        assert chained_ids == audit_ids, f"{tenant}: chain order differs from production{context}"
        assert [record["sequence_number"] for record in chain] == list(range(len(chain)))
        assert chain[0]["event_type"] == "system.genesis"


def _verify_exits_0(settings: Settings, workdir: Path) -> str:
    env = _base_environ() | {"AUDIT_DATABASE_URL": settings.database_url}
    result = _run_cli(["verify"], env, workdir)
    assert result.returncode == 0, _outputs(result)
    return result.stdout


# --- 1. health and readiness -----------------------------------------------------------


def test_health_and_ready_answer_json_and_sigterm_closes_the_port(
    daemons: ServiceProcesses, settings: Settings,
) -> None:
    port = free_port()
    daemon = daemons.start(settings, **_daemon_environ(settings, AUDIT_HEALTH_PORT=str(port)))

    ready = daemon.wait_for(_ready_body(port), READY_TIMEOUT_S, "/ready to answer 200")
    assert ready["database"] == "ok", ready
    assert ready["assigned_partitions"] == [0, 1, 2, 3], ready

    status, content_type, body = _http(port, "/ready")
    assert (status, content_type) == (200, "application/json"), daemon.tail()
    assert body["status"] == "ready", body

    status, content_type, body = _http(port, "/health")
    assert (status, content_type) == (200, "application/json"), daemon.tail()
    assert body["status"] == "ok", body

    status, _, _ = _http(port, "/no-such-path")
    assert status == 404

    status, _, _ = _http(port, "/health", method="POST")
    assert status == 405

    assert daemon.stop() == 0, daemon.tail()
    assert not _port_open(port), f"port {port} still accepts connections after exit"


# --- 2. SIGTERM mid-stream -------------------------------------------------------------


def test_sigterm_mid_stream_exits_0_promptly_and_loses_nothing(
    daemons: ServiceProcesses, settings: Settings, kafka_bootstrap: str, topic: str,
    tmp_path: Path,
) -> None:
    tenants = [f"tenant-term-{index}" for index in range(5)]
    produced: dict[str, list[str]] = {}
    _produce_round_robin(kafka_bootstrap, topic, tenants, 3000, produced)
    daemon = daemons.start(settings, **_daemon_environ(settings, AUDIT_BATCH_SIZE="50"))

    daemon.wait_for(_chained_more_than(settings.database_url, 0), PROGRESS_TIMEOUT_S,
                    "the first records to be chained")
    signalled = time.monotonic()
    assert daemon.stop() == 0, daemon.tail()
    stop_s = time.monotonic() - signalled

    # A clean stop leaves no half-written batch: the offsets stored in the database cover
    # exactly the records chained (every event is valid, and none was seen twice).
    chained_at_stop = _chained(settings.database_url)
    stored = _stored_offsets(settings)
    assert sum(stored.values()) == chained_at_stop, (stored, chained_at_stop, daemon.tail())
    # ... and the offsets were committed to Kafka before leaving the group.
    assert _kafka_committed_offsets(settings, sorted(stored)) == stored, daemon.tail()

    totals = run_until_idle(settings)

    context = f" (stopped after {chained_at_stop} of 3000 in {stop_s:.1f}s)"
    assert (totals.chained, totals.duplicates, totals.rejected) == (
        3000 - chained_at_stop, 0, 0), context
    _assert_chains_hold_exactly(settings.database_url, produced, context)
    assert f"verify: OK, 5 chains, {3000 + 5} records intact" in _verify_exits_0(
        settings, tmp_path)


def _waiting_on_a_lock(database_url: str) -> Callable[[], bool | None]:
    """True once the daemon's batch transaction waits for a lock held by someone else."""
    def probe() -> bool | None:
        waiting = scalar(database_url,
                         "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                         " AND application_name = 'audit-service' AND wait_event_type = 'Lock'")
        return True if waiting else None

    return probe


def test_sigterm_while_the_batch_waits_for_a_tenant_lock_exits_0_promptly(
    daemons: ServiceProcesses, settings: Settings, kafka_bootstrap: str, topic: str,
) -> None:
    produce_events(kafka_bootstrap, topic, [wire_event("tenant-locked")])
    daemon = daemons.start(settings, **_daemon_environ(settings))
    daemon.wait_for(_chained_more_than(settings.database_url, 0), PROGRESS_TIMEOUT_S,
                    "the tenant's first record")
    # Hold the tenant's head the way a second instance in the middle of a batch does
    # (SPEC 5: two instances may briefly hold the same partition).
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as other_instance:
            try:
                other_instance.execute(text(
                    "SELECT * FROM audit_chain_state WHERE tenant_id = 'tenant-locked' "
                    "FOR UPDATE"))
                produce_events(kafka_bootstrap, topic, [wire_event("tenant-locked")])
                daemon.wait_for(_waiting_on_a_lock(settings.database_url), PROGRESS_TIMEOUT_S,
                                "the batch to wait for the tenant lock")

                assert daemon.stop() == 0, daemon.tail()
            finally:
                daemon.kill()  # while the lock is held, so nothing commits after the test
    finally:
        engine.dispose()


# --- 3. kill -9 at random moments ------------------------------------------------------


def test_sigkill_at_random_moments_then_restart_chains_each_event_once_in_order(
    daemons: ServiceProcesses, settings: Settings, kafka_bootstrap: str, topic: str,
    tmp_path: Path,
) -> None:
    # Events arrive in waves, one before each start, so every incarnation has work in
    # flight when it is killed, however fast the previous one was.
    kills, per_tenant = 4, 375
    tenants = [f"tenant-kill-{index}" for index in range(4)]
    total = kills * per_tenant * len(tenants)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    produced: dict[str, list[str]] = {}
    history: list[str] = []
    last_count = 0
    # Fast group timings: a killed member stays in the group until its session expires and
    # the broker holds the next join until then: ~11 s per restart with the fixture's 6 s
    # session / 10 s poll interval, 2-7 s with these. Correctness must not depend on them.
    environ = _daemon_environ(settings, **FAULT_GROUP_TIMINGS)

    for round_number in range(1, kills + 1):
        _produce_one_partition_per_tenant(kafka_bootstrap, topic, tenants, per_tenant, produced)
        daemon = daemons.start(settings, **environ)
        daemon.wait_for(_chained_more_than(settings.database_url, last_count),
                        PROGRESS_TIMEOUT_S, f"progress after start {round_number} (seed {seed})")
        delay_s = rng.uniform(0.0, 0.3)
        time.sleep(delay_s)
        daemon.signal(signal.SIGKILL)
        daemon.wait()
        last_count = _chained(settings.database_url)
        history.append(f"kill {round_number} +{delay_s:.3f}s: {last_count} chained")

    final = daemons.start(settings, "--exit-when-idle", **environ)
    assert final.wait(DRAIN_TIMEOUT_S) == 0, final.tail()

    context = f" (seed {seed}; {'; '.join(history)})"
    _assert_chains_hold_exactly(settings.database_url, produced, context)
    assert rejections(settings.database_url) == [], context
    assert sum(_stored_offsets(settings).values()) == total, context
    assert f"verify: OK, 4 chains, {total + 4} records intact" in _verify_exits_0(
        settings, tmp_path)


# --- 4. CLI exit codes -----------------------------------------------------------------


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, _outputs(result)
    assert "Traceback" not in result.stderr, _outputs(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, _outputs(result)
    for needle in needles:
        assert needle in lines[0], _outputs(result)
    return lines[0]


def test_verify_exits_0_on_an_intact_store(
    settings: Settings, kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    events = [wire_event(f"tenant-ok-{index % 2}") for index in range(20)]
    produce_events(kafka_bootstrap, topic, events)
    run_until_idle(settings)

    stdout = _verify_exits_0(settings, tmp_path)

    assert "verify: OK, 2 chains, 22 records intact" in stdout, stdout


@pytest.mark.parametrize("command", ["verify", "run"])
def test_unreachable_database_is_one_line_exit_2_without_the_password(
    command: str, tmp_path: Path
) -> None:
    env = _base_environ() | {
        "AUDIT_DATABASE_URL": UNREACHABLE_DATABASE_URL,
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "AUDIT_HEALTH_PORT": "0",
    }

    result = _run_cli([command], env, tmp_path)

    _assert_one_line_error(result, "database")
    assert "s3cret-pw" not in result.stdout + result.stderr, _outputs(result)


def test_invalid_config_value_is_one_line_exit_2(tmp_path: Path) -> None:
    env = _base_environ() | {
        "AUDIT_DATABASE_URL": UNREACHABLE_DATABASE_URL,
        "AUDIT_BATCH_SIZE": "abc",
    }

    result = _run_cli(["run"], env, tmp_path)

    _assert_one_line_error(result, "batch_size")


def test_run_refuses_an_unmigrated_database(
    empty_database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = _base_environ() | {
        "AUDIT_DATABASE_URL": empty_database_url,
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "AUDIT_HEALTH_PORT": "0",
    }

    result = _run_cli(["run"], env, tmp_path)

    _assert_one_line_error(result, "audit-service migrate")
    tables = scalar(empty_database_url,
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
    assert tables == 0, "run must not create the schema itself"


