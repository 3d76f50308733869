"""Runs of the shipped daemon (`audit-service run` as a subprocess) for the benchmark."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Producer
from process_usage import Usage, UsageSampler
from sqlalchemy import Connection, create_engine, text
from workload import wire_event

from audit_service.dev.devstack import free_port

START_TIMEOUT_S = 60
"""How long the daemon may take to join the group and report ready."""


@dataclass
class ServiceRun:
    events: int
    wall_s: float
    first_to_last_s: float
    usage: Usage
    verified: bool
    counted: int
    """Records committed after the first batch's commit: those the span paid for."""
    genesis: PhaseRate | None = None
    """Of a run where every tenant is new: the batches that start chains, then the rest."""
    steady: PhaseRate | None = None

    @property
    def rate(self) -> float:
        """Events/s from the first batch's commit to the last's (the first batch is not
        counted: its work happened before the span began)."""
        return self.counted / self.first_to_last_s if self.first_to_last_s else 0.0


@dataclass
class PhaseRate:
    """Events/s over the batches of one phase of a run: their events over their times."""

    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


# Per batch (one ingested_at, taken when its transaction starts): its events, how many are
# a tenant's first, and its time up to the next batch's start (the topic is pre-filled, so
# batches follow each other). Genesis batches: every event a tenant's first (each also
# appends a genesis record and creates a head); steady: none; mixed batches are neither.
# The partitions' first events are spread over seconds among other events, so timing the
# span of the first events alone would charge the steady batches in between to genesis.
_PHASE = text(
    "SELECT coalesce(sum(events), 0), coalesce(EXTRACT(EPOCH FROM sum(spent)), 0) FROM "
    "(SELECT count(*) FILTER (WHERE sequence_number > 0) AS events, "
    "count(*) FILTER (WHERE sequence_number = 1) AS firsts, "
    "lead(ingested_at) OVER (ORDER BY ingested_at) - ingested_at AS spent "
    "FROM audit_records GROUP BY ingested_at) AS batches "
    "WHERE spent IS NOT NULL AND events > 0 "
    "AND CASE WHEN :first_events THEN firsts = events ELSE firsts = 0 END"
)


def _phase(connection: Connection, first_events: bool) -> PhaseRate:
    counted, seconds = connection.execute(_PHASE, {"first_events": first_events}).one()
    return PhaseRate(int(counted), float(seconds))


def _env(database_url: str, bootstrap: str, topic: str, health_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "AUDIT_DATABASE_URL": database_url, "AUDIT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "AUDIT_KAFKA_TOPIC": topic, "AUDIT_CONSUMER_GROUP": f"bench-{topic}",
        "AUDIT_HEALTH_PORT": str(health_port), "AUDIT_LOG_LEVEL": "WARNING",
        "AUDIT_KAFKA_SESSION_TIMEOUT_MS": "6000", "AUDIT_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "AUDIT_KAFKA_MAX_POLL_INTERVAL_MS": "30000",
    }


def _verify(database_url: str) -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "audit_service", "verify"], capture_output=True, text=True,
        env={**os.environ, "AUDIT_DATABASE_URL": database_url}, timeout=1800, check=False,
    )
    return result.returncode == 0


def drain_with_service(
    database_url: str, bootstrap: str, topic: str, events: int, log_path: Path,
    environ: dict[str, str] | None = None, phases: bool = False,
) -> ServiceRun:
    """Run the daemon over a pre-filled topic until idle; rate from first to last record.
    `environ`: further AUDIT_* settings (checkpoints, say). `phases`: also measure the
    genesis phase (each tenant's first event) apart from the steady phase."""
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "audit_service", "run", "--exit-when-idle"],
            env=_env(database_url, bootstrap, topic, 0) | (environ or {}), stdout=log,
            stderr=subprocess.STDOUT,
        )
        usage = UsageSampler(process.pid)
        code = process.wait(timeout=3600)
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"daemon exited {code}; see {log_path}")
    engine = create_engine(database_url)
    with engine.connect() as connection:
        count, counted, first, last = connection.execute(text(
            "SELECT count(*), count(*) FILTER (WHERE ingested_at > first), "
            "EXTRACT(EPOCH FROM first), EXTRACT(EPOCH FROM max(ingested_at)) FROM "
            "(SELECT ingested_at, min(ingested_at) OVER () AS first FROM audit_records "
            "WHERE sequence_number > 0) AS chained GROUP BY first")).one()
        genesis = _phase(connection, True) if phases else None
        steady = _phase(connection, False) if phases else None
    engine.dispose()
    if count != events:
        raise RuntimeError(f"expected {events} chained records, found {count}")
    return ServiceRun(events, wall, float(last - first), usage.result(float(first), float(last)),
                      _verify(database_url), counted, genesis, steady)


@dataclass
class LatencyRun:
    events: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited early with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as reply:
                if json.load(reply)["status"] == "ready":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("daemon did not become ready")


def _produce_steadily(bootstrap: str, topic: str, rate: int, seconds: float) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    sent = 0
    begin = time.monotonic()
    while time.monotonic() - begin < seconds:
        for _ in range(per_tick):
            event = wire_event(sent, datetime.now(UTC))
            producer.produce(topic, key=event["tenant_id"].encode(),
                             value=json.dumps(event, separators=(",", ":")).encode())
            sent += 1
        producer.poll(0)
        sleep = begin + (sent / per_tick) * tick - time.monotonic()
        if sleep > 0:
            time.sleep(sleep)
    producer.flush(60)
    return sent


def steady_latency(
    database_url: str, bootstrap: str, topic: str, rate: int, seconds: float, log_path: Path
) -> LatencyRun:
    """Event timestamp -> ingested_at percentiles at a steady produce rate."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "audit_service", "run"],
            env=_env(database_url, bootstrap, topic, port), stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(port, process)
            sent = _produce_steadily(bootstrap, topic, rate, seconds)
            engine = create_engine(database_url)
            deadline = time.monotonic() + 120
            query = text("SELECT count(*) FROM audit_records WHERE sequence_number > 0")
            while time.monotonic() < deadline:
                with engine.connect() as connection:
                    if connection.execute(query).scalar() == sent:
                        break
                time.sleep(0.5)
            with engine.connect() as connection:
                row = connection.execute(text(
                    "SELECT count(*), "
                    "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY lat), "
                    "max(lat) FROM (SELECT EXTRACT(EPOCH FROM ingested_at - timestamp) * 1000 "
                    "AS lat FROM audit_records WHERE sequence_number > 0) AS latencies")).one()
            engine.dispose()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    count, (p50, p95, p99), worst = row
    if count != sent:
        raise RuntimeError(f"latency run: sent {sent}, chained {count}")
    return LatencyRun(count, p50, p95, p99, float(worst))
