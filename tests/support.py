"""Helpers shared by the integration and acceptance tests (not fixtures: plain functions)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from confluent_kafka import Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from audit_service.config import Settings
from audit_service.core.record_text import record_of
from audit_service.core.signed_note import generate_signer
from audit_service.dev.devstack import create_topic
from audit_service.ingest.daemon import Daemon, RunLimits, RunTotals, StopSignal
from audit_service.storage.models import AuditRejectedEvent
from audit_service.storage.reader import AuditReader

DAEMON_TIMEOUT_S = 90.0


def admin_execute(admin_url: str, statement: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) outside a transaction."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def database_url_for(admin_url: str, name: str) -> str:
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@contextlib.contextmanager
def temporary_database(admin_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A uniquely named database (a copy of `template` when given), dropped afterwards;
    yields its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy_of = f' TEMPLATE "{template}"' if template else ""
    admin_execute(admin_url, f'CREATE DATABASE "{name}"{copy_of}')
    try:
        yield name
    finally:
        admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_topic(bootstrap: str, prefix: str = "audit.events.test") -> str:
    """A unique topic with 4 partitions, like audit.events."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    create_topic(bootstrap, name, partitions=4)
    return name


def service_settings(
    database_url: str, bootstrap: str, topic: str, **overrides: Any
) -> Settings:
    """Settings for a test daemon: its own group, no health server, Tansu-friendly timings."""
    values: dict[str, Any] = {
        "database_url": database_url, "kafka_bootstrap_servers": bootstrap,
        "kafka_topic": topic, "consumer_group": f"audit-test-{topic}", "poll_timeout_ms": 200,
        "health_port": 0, "kafka_session_timeout_ms": 6000,
        "kafka_heartbeat_interval_ms": 1000, "kafka_max_poll_interval_ms": 10000,
        "retry_max_backoff_s": 2.0,
    }
    return Settings(**(values | overrides))

T = TypeVar("T")


def wire_event(tenant_id: str, **fields: Any) -> dict[str, Any]:
    """A valid wire-format event with a fresh audit_id; `fields` override or add."""
    event: dict[str, Any] = {
        "audit_id": str(uuid.uuid4()),
        "tenant_id": tenant_id,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event_type": "alert.classified",
        "actor_type": "agent",
        "actor_id": "triage-agent",
        "source_service": "tests",
    }
    event.update(fields)
    return event


def encode(event: dict[str, Any], key: str | None = None) -> tuple[bytes | None, bytes]:
    """(key, value) bytes for an event; the key defaults to its tenant."""
    message_key = event["tenant_id"] if key is None else key
    return message_key.encode(), json.dumps(event).encode()


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]],
            partition: int | None = None) -> int:
    """Publish raw messages with confluent-kafka (a client independent of the service's)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "message.max.bytes": 10_000_000})
    failures: list[str] = []

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    count = 0
    for key, value in messages:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
        producer.poll(0)
        count += 1
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not failures, failures
    return count


def produce_events(bootstrap: str, topic: str, events: Iterable[dict[str, Any]]) -> int:
    return produce(bootstrap, topic, (encode(event) for event in events))


def run_until_idle(settings: Settings, timeout_s: float = DAEMON_TIMEOUT_S) -> RunTotals:
    """Run the real daemon in-process until it has consumed everything, bounded in time."""
    stop = StopSignal()
    timer = threading.Timer(timeout_s, stop.event.set)
    timer.start()
    try:
        totals = Daemon(settings, stop).run(RunLimits(exit_when_idle=True))
    finally:
        timer.cancel()
    assert not stop.event.is_set(), f"daemon did not go idle within {timeout_s}s"
    return totals


def records_of(reader: AuditReader, tenant_id: str) -> list[dict[str, Any]]:
    """A tenant's records as hashed dicts, in sequence order, read in one snapshot."""
    return [record_of(row) for row in reader.read_chain_rows(tenant_id)[1]]


def chain_of(database_url: str, tenant_id: str) -> list[dict[str, Any]]:
    """A tenant's records as hashed dicts, in sequence order, read back from PostgreSQL."""
    engine = create_engine(database_url)
    try:
        return records_of(AuditReader(engine), tenant_id)
    finally:
        engine.dispose()


def rejections(database_url: str) -> list[AuditRejectedEvent]:
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            rows = session.scalars(select(AuditRejectedEvent).order_by(AuditRejectedEvent.id))
            result = list(rows)
            session.expunge_all()
            return result
    finally:
        engine.dispose()


def scalar(database_url: str, sql: str, **params: Any) -> Any:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


# --- signed checkpoints: keys, daemon settings, and judges independent of our code -------


def make_signer_files(directory: Path, name: str) -> tuple[Path, str]:
    """A signer key file `directory/NAME.key` (0600) and its verifier key text."""
    signer = generate_signer(name)
    key_file = directory / f"{name}.key"
    key_file.write_text(signer.to_text() + "\n")
    key_file.chmod(0o600)
    return key_file, signer.verifier().to_text()


def checkpoint_settings(settings: Settings, key_file: Path, sink: Path,
                        **overrides: Any) -> Settings:
    """`settings` with checkpoints signed by `key_file` and published to `sink`."""
    return service_settings(
        settings.database_url, settings.kafka_bootstrap_servers, settings.kafka_topic,
        batch_size=settings.batch_size, checkpoint_key_file=str(key_file),
        checkpoint_dir=str(sink), **overrides)


def sink_lines(sink: Path, tenant: str) -> list[dict[str, Any]]:
    path = sink / f"checkpoints-{tenant}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH, recursively, over the raw leaf data."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    split = 1
    while split * 2 < len(leaves):
        split *= 2
    left, right = reference_root(leaves[:split]), reference_root(leaves[split:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_note_independently(note: str, verifier_key: str) -> str:
    """The note's text after checking its one signature with the verifier key text
    (name+hex id+base64(0x01 || key)) and the signed-note layout, by hand."""
    name, key_id_hex, key_b64 = verifier_key.split("+", 2)
    key = base64.b64decode(key_b64)
    assert key[0] == 1
    text, _, signature_line = note.rpartition("\n\n")
    text += "\n"
    dash, signer, signature_b64 = signature_line.rstrip("\n").split(" ")
    assert dash == "\u2014" and signer == name
    signature = base64.b64decode(signature_b64)
    expected_id = hashlib.sha256(name.encode() + b"\n\x01" + key[1:]).digest()[:4]
    assert signature[:4] == expected_id == bytes.fromhex(key_id_hex)
    Ed25519PublicKey.from_public_bytes(key[1:]).verify(signature[4:], text.encode())
    return text


# --- processes, verify and exactly-once accounting (fault-injection tests) ---------------

FAULT_GROUP_TIMINGS = {
    "AUDIT_KAFKA_SESSION_TIMEOUT_MS": "3000",
    "AUDIT_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
    "AUDIT_KAFKA_MAX_POLL_INTERVAL_MS": "3000",
}
"""Fast group timings: a killed member blocks the next join until its session expires."""
PROCESS_STOP_TIMEOUT_S = 10.0
"""SPEC 5: SIGTERM/SIGINT exit 0 within ~10 s; also the bound on reaping a killed process."""
VERIFY_TIMEOUT_S = 120.0
WAIT_INTERVAL_S = 0.05
PROCESS_LOG_TAIL_CHARS = 4000


def process_environ(settings: Settings, **overrides: str) -> dict[str, str]:
    """Environment for `python -m audit_service`: the caller's without AUDIT_* (an
    AUDIT_CONFIG would leak in), the service configured by `settings`, then `overrides`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUDIT_")}
    env.update({
        "AUDIT_DATABASE_URL": settings.database_url,
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "AUDIT_KAFKA_TOPIC": settings.kafka_topic,
        "AUDIT_CONSUMER_GROUP": settings.consumer_group,
        "AUDIT_BATCH_SIZE": str(settings.batch_size),
        "AUDIT_POLL_TIMEOUT_MS": str(settings.poll_timeout_ms),
        "AUDIT_HEALTH_HOST": "127.0.0.1",
        "AUDIT_HEALTH_PORT": "0",
        "AUDIT_RETRY_MAX_BACKOFF_S": str(settings.retry_max_backoff_s),
        "AUDIT_LOG_FORMAT": "text",
        **FAULT_GROUP_TIMINGS,
    })
    env.update(overrides)
    return env


class ServiceProcess:
    """One `audit-service run` subprocess; stdout and stderr go to a log file."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path):
        self.log_path = log_path
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "audit_service", "run", *args], env=env, cwd=cwd,
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = PROCESS_STOP_TIMEOUT_S) -> int:
        """The exit code; fails the test (with the log) if it does not exit in time."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daemon {self.pid} still running {timeout_s}s later\n{self.tail()}")

    def stop(self) -> int:
        """SIGTERM and the exit code; fails the test (with the log) if it does not exit
        within PROCESS_STOP_TIMEOUT_S."""
        self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        """SIGKILL (a crash) and reap it."""
        if self.running():
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored
            self.process.wait(timeout=PROCESS_STOP_TIMEOUT_S)

    def output(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"

    def tail(self) -> str:
        return f"--- {self.log_path.name}\n{self.output()[-PROCESS_LOG_TAIL_CHARS:]}"

    def wait_for(self, probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """Poll `probe` until it returns a value; fail if the daemon exits or time runs out."""
        return wait_until(probe, timeout_s, what, self)


class ServiceProcesses:
    """Starts daemons for one test (each with its own log) and kills the rest in teardown."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[ServiceProcess] = []

    def start(self, settings: Settings, *args: str, **environ: str) -> ServiceProcess:
        """`audit-service run ARGS` configured by `settings` and `environ` (AUDIT_*
        overrides). The working directory holds no audit.ini."""
        env = process_environ(settings, **environ)
        log_path = self.workdir / f"daemon-{len(self.started) + 1}.log"
        daemon = ServiceProcess(args, env, log_path, self.workdir)
        self.started.append(daemon)
        return daemon

    def kill_all(self) -> None:
        for daemon in self.started:
            daemon.kill()


def service_processes(workdir: Path) -> Iterator[ServiceProcesses]:
    """Body of a `daemons` fixture: the launcher, and every daemon it started killed after."""
    processes = ServiceProcesses(workdir)
    try:
        yield processes
    finally:
        processes.kill_all()


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A folder for a test's own server, outside pytest's basetemp (pytest prunes old
    basetemps, and a server whose data directory vanishes dies); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_until(probe: Callable[[], T | None], timeout_s: float, what: str,
               daemon: ServiceProcess | None = None,
               interval_s: float = WAIT_INTERVAL_S) -> T:
    """Poll `probe` every `interval_s` until it returns a value (not None); fail when time
    runs out, or when `daemon` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if daemon is not None and not daemon.running():
            pytest.fail(f"daemon exited ({daemon.process.returncode}) while waiting for "
                        f"{what}\n{daemon.tail()}")
        if time.monotonic() > deadline:
            detail = f"\n{daemon.tail()}" if daemon is not None else ""
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}{detail}")
        time.sleep(interval_s)


def http_status(port: int, path: str) -> int | None:
    """Status of one GET to the health server; None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def fault_settings(database_url: str, bootstrap: str, topic: str) -> Settings:
    """Settings for a fault scenario's daemons (processes get them as AUDIT_* variables)."""
    return Settings(
        database_url=database_url, kafka_bootstrap_servers=bootstrap, kafka_topic=topic,
        consumer_group=f"audit-fault-{topic}", batch_size=250, poll_timeout_ms=200,
        health_port=0, retry_max_backoff_s=1.0,
    )


def chained_at_least(database_url: str, count: int) -> Callable[[], int | None]:
    """A wait_until probe: the number of chained events once it reaches `count`."""
    def probe() -> int | None:
        chained = chained_count(database_url)
        return chained if chained >= count else None

    return probe


def chained_count(database_url: str) -> int:
    """Event records in the store (genesis records excluded)."""
    return int(scalar(database_url,
                      "SELECT count(*) FROM audit_records WHERE sequence_number > 0"))


def verify_ok(database_url: str, cwd: Path) -> str:
    """`audit-service verify` of every chain, as a subprocess; asserts exit 0, returns stdout."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUDIT_")}
    env["AUDIT_DATABASE_URL"] = database_url
    result = subprocess.run([sys.executable, "-m", "audit_service", "verify"], env=env,
                            cwd=cwd, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S,
                            check=False)
    assert result.returncode == 0, (
        f"verify exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


@dataclass
class Tally:
    """Where each produced audit_id ended up; every list must be empty."""

    produced: int
    chained: int
    rejected: int
    lost: list[str]
    """Neither chained nor rejected."""
    duplicated: list[str]
    """Chained or rejected more than once, or both chained and rejected."""
    misplaced: list[str]
    """Chained though it should have been rejected, or the reverse."""
    unexpected: list[str]
    """Chained or rejected though nobody produced it in this scenario."""
    reordered: list[str]
    """Tenants whose chain order differs from their production order."""

    def summary(self) -> str:
        return (f"produced {self.produced}, chained {self.chained}, rejected {self.rejected}, "
                f"lost {len(self.lost)}, duplicated {len(self.duplicated)}")

    def problems(self, limit: int = 20) -> str:
        parts = []
        for name in ("lost", "duplicated", "misplaced", "unexpected", "reordered"):
            ids: list[str] = getattr(self, name)
            if ids:
                more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
                parts.append(f"{len(ids)} {name}: {', '.join(sorted(ids)[:limit])}{more}")
        return "; ".join(parts)


def tally(database_url: str, produced: Mapping[str, Sequence[str]],
          expected_rejected: Collection[str] = (), *, check_order: bool = True) -> Tally:
    """Account for every produced audit_id (tenant -> ids in production order) in the store."""
    chained_rows = _rows(database_url,
                         "SELECT tenant_id, audit_id::text FROM audit_records "
                         "WHERE sequence_number > 0 ORDER BY tenant_id, sequence_number")
    rejected_ids = [row[0] for row in _rows(
        database_url, "SELECT coalesce(audit_id, '<no audit_id, id ' || id || '>') "
                      "FROM audit_rejected_events")]
    chained = Counter(audit_id for _, audit_id in chained_rows)
    rejected = Counter(rejected_ids)
    wanted_rejected = set(expected_rejected)
    every_id = [audit_id for ids in produced.values() for audit_id in ids]
    known = set(every_id)
    lost, duplicated, misplaced = [], [], []
    for audit_id in every_id:
        times = chained[audit_id] + rejected[audit_id]
        if times == 0:
            lost.append(audit_id)
        elif times > 1:
            duplicated.append(audit_id)
        elif (rejected[audit_id] == 1) != (audit_id in wanted_rejected):
            misplaced.append(audit_id)
    unexpected = sorted((set(chained) | set(rejected)) - known)
    chains: dict[str, list[str]] = {}
    for tenant, audit_id in chained_rows:
        chains.setdefault(tenant, []).append(audit_id)
    reordered = [
        tenant for tenant, ids in produced.items()
        if check_order and list(dict.fromkeys(i for i in chains.get(tenant, []) if i in known))
        != [i for i in ids if chained[i]]
    ]
    return Tally(len(every_id), sum(chained.values()), sum(rejected.values()), lost,
                 duplicated, misplaced, unexpected, reordered)


def assert_each_exactly_once(database_url: str, produced: Mapping[str, Sequence[str]],
                             expected_rejected: Collection[str] = (), context: str = "", *,
                             check_order: bool = True) -> Tally:
    """Every produced audit_id chained exactly once (in its tenant's production order unless
    told otherwise) or, when expected, rejected exactly once; the failure lists the lost and
    duplicated ids."""
    result = tally(database_url, produced, expected_rejected, check_order=check_order)
    assert not result.problems(), f"{result.problems()}{context}"
    return result


def _rows(database_url: str, sql: str) -> list[Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql)).all())
    finally:
        engine.dispose()


class StreamProducer(threading.Thread):
    """Publishes `total` events from a background thread, in chunks spread over `duration_s`,
    so faults hit a live stream. Event i belongs to tenant i % len(tenants), and tenant j
    goes to partition j % partitions (so every partition has work and each tenant's order
    is its partition's). Every `reject_every`-th event carries an unknown field: it must
    end up in the rejects table, exactly once."""

    def __init__(self, bootstrap: str, topic: str, tenants: Sequence[str], total: int,
                 duration_s: float, *, partitions: int = 4, reject_every: int = 0,
                 chunk: int = 100):
        super().__init__(name=f"produce-{topic}", daemon=True)
        self.bootstrap, self.topic, self.tenants = bootstrap, topic, list(tenants)
        self.total, self.duration_s, self.partitions = total, duration_s, partitions
        self.reject_every, self.chunk = reject_every, chunk
        self.produced: dict[str, list[str]] = {tenant: [] for tenant in self.tenants}
        """Tenant -> audit_ids in production order; read it after finish()."""
        self.rejected: set[str] = set()
        self.failures: list[str] = []
        self.sent = 0
        """Events handed to the producer so far (for progress checks)."""

    def run(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all",
                             "linger.ms": 5})
        started = time.monotonic()
        for first in range(0, self.total, self.chunk):
            for index in range(first, min(first + self.chunk, self.total)):
                slot = index % len(self.tenants)
                event = wire_event(self.tenants[slot])
                if self.reject_every and index % self.reject_every == self.reject_every - 1:
                    event["unexpected_field"] = "must be rejected, not dropped"
                    self.rejected.add(event["audit_id"])
                key, value = encode(event)
                producer.produce(self.topic, key=key, value=value,
                                 partition=slot % self.partitions,
                                 on_delivery=self._on_delivery)
                self.produced[event["tenant_id"]].append(event["audit_id"])
            producer.poll(0)
            self.sent = min(first + self.chunk, self.total)
            due = started + self.duration_s * self.sent / self.total
            time.sleep(max(0.0, due - time.monotonic()))
        remaining = producer.flush(30)
        if remaining:
            self.failures.append(f"{remaining} messages not delivered")

    def _on_delivery(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.failures.append(str(error))

    def finish(self, timeout_s: float = 60.0) -> None:
        """Wait until every event is delivered (bounded); fail on any delivery error."""
        self.join(timeout_s)
        assert not self.is_alive(), f"producer still running after {timeout_s}s"
        assert not self.failures, self.failures[:5]

    @property
    def valid(self) -> int:
        """Events that must be chained (the rest must be rejected); known before the run."""
        return self.total - (self.total // self.reject_every if self.reject_every else 0)


@contextlib.contextmanager
def statements_run(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements the engine sends meanwhile (raw-cursor COPY is not among them)."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)
