"""`audit-service dev`: a one-command local stack that shows the service doing its job.

Starts an embedded PostgreSQL and a Tansu broker, migrates, runs the daemon as a real
subprocess (the same `run` an operator starts), feeds it realistic events plus one
malformed message, and every few seconds prints what was produced, chained, rejected,
the daemon's /health and the verdict of `audit-service verify --checkpoints` (the daemon
signs checkpoints with a dev key); at the end, a `reconcile` of the topic with the store.

Every run starts from an empty `audit` database: Tansu keeps its log in memory, so the
offsets a previous run stored in PostgreSQL would point past the end of the new, empty
topic.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from audit_service.broker.topic import produce_messages
from audit_service.dev.devstack import (
    DevStackError,
    EmbeddedPostgres,
    TansuBroker,
    create_topic,
    free_port,
)
from audit_service.dev.samples import produce_events, sample_event, tenant_names
from audit_service.ingest.checkpointing import write_key_pair
from audit_service.storage.engine import describe

DEV_DATABASE = "audit"
DEV_TOPIC = "audit.events"
DEV_PARTITIONS = 4
PROGRESS_INTERVAL_S = 5.0
READY_TIMEOUT_S = 60.0  # first consumer-group join against Tansu takes a few seconds
DRAIN_TIMEOUT_S = 10.0  # on shutdown, how long the daemon may take to chain what was sent
DAEMON_STOP_TIMEOUT_S = 15.0  # the daemon promises to exit within ~10 s of SIGTERM
COMMAND_TIMEOUT_S = 120.0  # migrate / verify / reconcile subprocesses
HTTP_TIMEOUT_S = 2.0
DEV_KEY_NAME = "audit-dev"
DEV_CHECKPOINT_EVERY_RECORDS = "100"
DEV_CHECKPOINT_EVERY_S = "5"
"""Checkpoints often, so a short dev run shows them being signed and verified."""
PRODUCER_JOIN_TIMEOUT_S = 15.0

# The Tansu quirk from SPEC section 7: with kafka-python's default group timeouts the
# first join takes over 20 s.
_CHECKPOINTS_VERIFIED = re.compile(r"(\d[\d,]*) checkpoints verified")

_TANSU_GROUP_SETTINGS = {
    "AUDIT_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "AUDIT_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
    "AUDIT_KAFKA_MAX_POLL_INTERVAL_MS": "10000",
}
_MALFORMED_VALUE = b'{"audit_id": "not even JSON'


def run_dev_stack(
    state_dir: Path,
    tenants: int,
    rate: float,
    health_port: int,
    duration_s: float | None,
    echo: Callable[[str], None],
) -> int:
    """Run the local stack until Ctrl-C/SIGTERM or `duration_s`; return the exit code.

    0: clean run, and the final verify and reconcile passed; 1: the final verify found a
    broken chain or reconcile a finding; 2: a component failed to start or the daemon
    died. `health_port` 0 picks a free port.
    """
    if tenants < 1 or rate <= 0:
        echo("error: --tenants must be at least 1 and --rate above 0")
        return 2
    stack = _DevStack(Path(state_dir).resolve(), echo)
    stop = threading.Event()
    restore = _install_signal_handlers(stop)
    try:
        stack.start(health_port or free_port())
        stack.feed(tenant_names(tenants), rate)
        died = stack.watch(stop, duration_s)
        code = stack.finish()
        return 2 if died else code
    except DevStackError as exc:
        echo(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        echo("interrupted: stopping without the final drain")
        return 130
    finally:
        stack.teardown()
        restore()


def _install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """First SIGINT/SIGTERM/SIGHUP asks for a clean stop; a second one stops at once.

    Returns a function restoring the previous handlers.
    """
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # teardown still runs, without the drain wait
        stop.set()

    try:
        previous = {sig: signal.signal(sig, handler) for sig in signals}
    except ValueError:  # not the main thread: the caller handles stopping
        return lambda: None

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


class _DevStack:
    """The components of one dev run, started in order and stopped in reverse."""

    def __init__(self, state_dir: Path, echo: Callable[[str], None]) -> None:
        self.state_dir = state_dir
        self.echo = echo
        self.pg: EmbeddedPostgres | None = None
        self.broker: TansuBroker | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log: IO[bytes] | None = None
        self.env: dict[str, str] = {}
        self.health_url = ""
        self.started_at = time.monotonic()
        self.tenants: Sequence[str] = ()
        self.produced = _Counter()
        self.producer_stop = threading.Event()
        self.producer: threading.Thread | None = None
        self.producer_error: BaseException | None = None
        self.engine: Any = None
        self.pidfile = state_dir / "dev.pids"
        self.sink = state_dir / "checkpoints"
        self.public_key = state_dir / "keys" / f"{DEV_KEY_NAME}.pub"

    # -- start -------------------------------------------------------------------------

    def start(self, health_port: int) -> None:
        """Postgres, broker, topic, migrations, daemon; returns once the daemon is ready."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _stop_leftovers(self.pidfile, self.echo)
        pg_dir = self.state_dir / "pg"
        reused = (pg_dir / "PG_VERSION").exists()
        self.echo(f"state dir: {self.state_dir}")
        self.pg = EmbeddedPostgres.start(pg_dir)
        if reused:
            self.pg.drop_database(DEV_DATABASE)
            self.echo(
                f"postgres: reusing {pg_dir}; dropped and recreated database "
                f"'{DEV_DATABASE}' (the broker is memory-only, so every dev run starts clean)"
            )
        self.pg.create_database(DEV_DATABASE)
        database_url = self.pg.url(DEV_DATABASE)
        self.echo(f"postgres: {database_url}")

        self.broker = TansuBroker.start(log_path=self.state_dir / "tansu.log")
        create_topic(self.broker.bootstrap, DEV_TOPIC, partitions=DEV_PARTITIONS)
        self.echo(
            f"kafka: tansu on {self.broker.bootstrap}, topic {DEV_TOPIC} "
            f"({DEV_PARTITIONS} partitions), log {self.broker.log_path}"
        )
        self._write_pidfile()

        self.env = {
            **os.environ,
            "AUDIT_DATABASE_URL": database_url,
            "AUDIT_KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "AUDIT_KAFKA_TOPIC": DEV_TOPIC,
            "AUDIT_HEALTH_HOST": "127.0.0.1",
            "AUDIT_HEALTH_PORT": str(health_port),
            "PYTHONUNBUFFERED": "1",
            **_TANSU_GROUP_SETTINGS,
        }
        self.env.update(self._checkpoint_settings())
        self.health_url = f"http://127.0.0.1:{health_port}"
        self.engine = _read_only_engine(database_url)

        code, output = self._service_command("migrate")
        if code != 0:
            raise DevStackError(f"audit-service migrate exited {code}: {output}")
        self.echo("migrate: schema at head")
        self._start_daemon()
        self._wait_until_ready()
        self.started_at = time.monotonic()

    def _checkpoint_settings(self) -> dict[str, str]:
        """Signed checkpoints on: the dev key (made once, kept in the state dir) and a sink
        emptied with the database, since every dev run starts a new chain."""
        keys, sink = self.state_dir / "keys", self.state_dir / "checkpoints"
        keys.mkdir(exist_ok=True)
        self.public_key = keys / f"{DEV_KEY_NAME}.pub"
        if not (keys / f"{DEV_KEY_NAME}.key").exists():
            write_key_pair(DEV_KEY_NAME, keys)
        shutil.rmtree(sink, ignore_errors=True)
        sink.mkdir()
        self.sink = sink
        self.echo(f"checkpoints: signed with {keys / DEV_KEY_NAME}.key, published to {sink}")
        return {"AUDIT_CHECKPOINT_KEY_FILE": str(keys / f"{DEV_KEY_NAME}.key"),
                "AUDIT_CHECKPOINT_DIR": str(sink),
                "AUDIT_CHECKPOINT_EVERY_RECORDS": DEV_CHECKPOINT_EVERY_RECORDS,
                "AUDIT_CHECKPOINT_EVERY_S": DEV_CHECKPOINT_EVERY_S}

    def _start_daemon(self) -> None:
        log_path = self.state_dir / "daemon.log"
        self.daemon_log = log_path.open("wb")
        self.started_at = time.monotonic()
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "audit_service", "run"],
            stdin=subprocess.DEVNULL,
            stdout=self.daemon_log,
            stderr=subprocess.STDOUT,
            env=self.env,
            # Own session: Ctrl-C reaches only us, and we stop the daemon before its
            # database and broker.
            start_new_session=True,
        )
        self._write_pidfile()
        self.echo(f"daemon: pid {self.daemon.pid}, log {log_path}, health {self.health_url}/health")

    def _wait_until_ready(self) -> None:
        assert self.daemon is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise DevStackError(
                    f"daemon exited with code {self.daemon.returncode} during startup; "
                    f"log: {self._daemon_log_tail()}"
                )
            status, _ = _get_json(f"{self.health_url}/ready")
            if status == 200:
                self.echo(f"daemon: ready in {time.monotonic() - self.started_at:.1f}s")
                return
            time.sleep(0.2)
        raise DevStackError(
            f"daemon not ready after {READY_TIMEOUT_S:.0f}s ({self.health_url}/ready); "
            f"log: {self._daemon_log_tail()}"
        )

    # -- run ---------------------------------------------------------------------------

    def feed(self, tenants: Sequence[str], rate: float) -> None:
        """Send one malformed message, then start the paced sample producer thread."""
        assert self.broker is not None
        self.tenants = tenants
        malformed = (tenants[0].encode("utf-8"), _MALFORMED_VALUE)
        produce_messages(self.broker.bootstrap, DEV_TOPIC, [malformed])
        self.echo(
            f"sent 1 malformed message (invalid JSON, key {tenants[0]}): "
            "expect it in audit_rejected_events, not in any chain"
        )
        self.producer = threading.Thread(
            target=self._produce, args=(tenants, rate), name="dev-producer", daemon=True
        )
        self.producer.start()
        self.echo(
            f"producing ~{rate:g} events/s for {len(tenants)} tenant(s): {', '.join(tenants)}; "
            "Ctrl-C to stop"
        )

    def _produce(self, tenants: Sequence[str], rate: float) -> None:
        assert self.broker is not None
        try:
            produce_events(self.broker.bootstrap, DEV_TOPIC, self._paced(tenants, rate))
        except BaseException as exc:  # reported by watch(); the thread must not die silently
            self.producer_error = exc

    def _paced(self, tenants: Sequence[str], rate: float) -> Iterator[dict[str, Any]]:
        """Live events at about `rate` per second until producer_stop is set."""
        rng = random.Random()
        interval_s = 1.0 / rate
        next_at = time.monotonic()
        while not self.producer_stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self.producer_stop.wait(delay):
                return
            # After a stall, do not burst to catch up by more than one second's worth.
            next_at = max(next_at + interval_s, time.monotonic() - 1.0)
            yield sample_event(rng.choice(tenants), rng, datetime.now(UTC))
            self.produced.add()

    def watch(self, stop: threading.Event, duration_s: float | None) -> bool:
        """Print progress every PROGRESS_INTERVAL_S until stopped; True if the daemon died."""
        assert self.daemon is not None
        while True:
            timeout = PROGRESS_INTERVAL_S
            if duration_s is not None:
                timeout = min(timeout, max(0.0, self.started_at + duration_s - time.monotonic()))
            if stop.wait(timeout):
                self.echo("stopping (Ctrl-C again to skip the final drain)...")
                return False
            if self.daemon.poll() is not None:
                self.echo(
                    f"daemon exited unexpectedly with code {self.daemon.returncode}; "
                    f"log: {self._daemon_log_tail()}"
                )
                return True
            if self.producer_error is not None:
                raise DevStackError(f"sample producer failed: {self.producer_error}")
            if duration_s is not None and time.monotonic() - self.started_at >= duration_s:
                self.echo(f"duration of {duration_s:g}s reached, stopping...")
                return False
            self.echo(self._progress_line())

    # -- stop --------------------------------------------------------------------------

    def finish(self) -> int:
        """Stop producing, let the daemon drain, stop it, verify and reconcile; print the
        summary and reconcile's verdict."""
        self._stop_producer()
        self._drain()
        daemon_code = self._stop_daemon()
        verify_code, verify_text = self._verify()
        elapsed = time.monotonic() - self.started_at
        self.echo(
            f"summary: ran {elapsed:.0f}s | produced {self.produced.value} (+1 malformed) | "
            f"{self._chain_text()} | daemon exit {daemon_code} | {verify_text}"
        )
        # The topic against the store: every message sent, the malformed one included.
        reconcile_code, reconcile_line = self._service_command("reconcile")
        self.echo(reconcile_line if reconcile_code in (0, 1)
                  else f"reconcile: error {reconcile_code} ({reconcile_line})")
        return 1 if 1 in (verify_code, reconcile_code) else 0

    def _stop_producer(self) -> None:
        self.producer_stop.set()
        if self.producer is not None:
            self.producer.join(PRODUCER_JOIN_TIMEOUT_S)
            if self.producer.is_alive():
                self.echo("warning: sample producer did not stop in time")

    def _drain(self) -> None:
        """Wait (bounded) until every sent message is chained or rejected."""
        if self.daemon is None or self.daemon.poll() is not None:
            return
        expected = self.produced.value + 1  # + the malformed message
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            chained, rejected, _ = self._counts()
            if chained is not None and sum(chained.values()) + (rejected or 0) >= expected:
                return
            time.sleep(0.25)
        self.echo(f"warning: daemon had not chained all {expected} messages after "
                  f"{DRAIN_TIMEOUT_S:.0f}s")

    def _stop_daemon(self) -> int | None:
        """SIGTERM and wait; SIGKILL after DAEMON_STOP_TIMEOUT_S. Returns the exit code."""
        daemon, self.daemon = self.daemon, None
        if daemon is None:
            return None
        if daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(DAEMON_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.echo(f"daemon ignored SIGTERM for {DAEMON_STOP_TIMEOUT_S:.0f}s; killing it")
                daemon.kill()
                daemon.wait(DAEMON_STOP_TIMEOUT_S)
        if self.daemon_log is not None:
            self.daemon_log.close()
            self.daemon_log = None
        return daemon.returncode

    def teardown(self) -> None:
        """Stop whatever is still running, in reverse start order; never raises."""
        self.producer_stop.set()
        steps: list[tuple[str, Callable[[], object]]] = [("daemon", self._stop_daemon)]
        if self.engine is not None:
            steps.append(("database engine", self.engine.dispose))
        if self.broker is not None:
            steps.append(("broker", self.broker.stop))
        if self.pg is not None:
            steps.append(("postgres", self.pg.stop))
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # keep stopping the rest; report each failure
                self.echo(f"warning: stopping {name} failed: {exc}")
        self.broker = self.pg = self.engine = None
        self.pidfile.unlink(missing_ok=True)

    # -- observation -------------------------------------------------------------------

    def _progress_line(self) -> str:
        """One line: produced, chained per tenant, rejected, /health, verify verdict."""
        status, body = _get_json(f"{self.health_url}/health")
        health = f"health {status} {body.get('status', '')}".rstrip() if status else "health down"
        elapsed = time.monotonic() - self.started_at
        return (
            f"[{elapsed:5.0f}s] produced {self.produced.value} (+1 malformed) | "
            f"{self._chain_text()} | {health} | {self._verify()[1]}"
        )

    def _chain_text(self) -> str:
        chained, rejected, db_error = self._counts()
        if chained is None:
            return f"db: {db_error}"
        per_tenant = " ".join(f"{t}={chained.get(t, 0)}" for t in self.tenants)
        return f"chained {sum(chained.values())} ({per_tenant}) | rejected {rejected}"

    def _counts(self) -> tuple[dict[str, int] | None, int | None, str]:
        """Chained events per tenant (genesis excluded) and rejected messages, read-only."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT tenant_id, count(*) FROM audit_records "
                        "WHERE event_type <> 'system.genesis' GROUP BY tenant_id"
                    )
                ).all()
                rejected = conn.execute(text("SELECT count(*) FROM audit_rejected_events")).one()
        except SQLAlchemyError as exc:
            return None, None, " ".join(describe(exc).split())[:160]
        return {str(t): int(n) for t, n in rows}, int(rejected[0]), ""

    def _verify(self) -> tuple[int, str]:
        """Run `audit-service verify --checkpoints` as an auditor would, against the sink and
        the dev key; (exit code, one-line verdict)."""
        if not any(self.sink.glob("checkpoints-*.jsonl")):  # none signed yet
            code, output = self._service_command("verify")
            if code == 0:
                return code, "verify: OK (no checkpoint signed yet)"
        else:
            code, output = self._service_command(
                "verify", "--checkpoints", str(self.sink), "--public-key", str(self.public_key))
        if code == 0:
            signed = _CHECKPOINTS_VERIFIED.search(output)
            return code, f"verify: OK ({signed.group(1) if signed else 0} checkpoints verified)"
        if code == 1:
            return code, f"verify: BROKEN CHAIN ({output})"
        return code, f"verify: error {code} ({output})"

    def _service_command(self, *command: str) -> tuple[int, str]:
        """Run `python -m audit_service COMMAND...`; (exit code, last output line)."""
        try:
            result = subprocess.run(
                [sys.executable, "-m", "audit_service", *command],
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            return 2, f"timed out after {COMMAND_TIMEOUT_S:.0f}s"
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        return result.returncode, (lines[-1].strip() if lines else "no output")[:200]

    def _daemon_log_tail(self) -> str:
        path = self.state_dir / "daemon.log"
        if not path.exists():
            return "(no log)"
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return " | ".join(lines[-3:])[-500:] or "(empty)"

    def _write_pidfile(self) -> None:
        """Remember our child pids so a later run can stop them if this one is SIGKILLed."""
        pids = {
            "broker": self.broker.pid if self.broker is not None else None,
            "daemon": self.daemon.pid if self.daemon is not None else None,
        }
        self.pidfile.write_text(json.dumps(pids))


class _Counter:
    """A counter the producer thread increments and the main thread reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def add(self) -> None:
        with self._lock:
            self._value += 1

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


def _stop_leftovers(pidfile: Path, echo: Callable[[str], None]) -> None:
    """Stop a daemon or broker left running by a dev run that was killed outright.

    A leftover daemon would otherwise keep writing into the freshly recreated database.
    Only processes whose command line still matches what we started are touched.
    """
    if not pidfile.exists():
        return
    import psutil

    try:
        pids = json.loads(pidfile.read_text())
    except ValueError:
        pids = {}
    markers = {"daemon": "audit_service", "broker": "tansu"}
    for role, pid in pids.items():
        if not isinstance(pid, int) or role not in markers:
            continue
        try:
            process = psutil.Process(pid)
            if markers[role] not in " ".join(process.cmdline()):
                continue
            echo(f"stopping {role} (pid {pid}) left over from an earlier dev run")
            process.terminate()
            try:
                process.wait(DAEMON_STOP_TIMEOUT_S)
            except psutil.TimeoutExpired:
                process.kill()
        except psutil.Error:
            continue
    pidfile.unlink(missing_ok=True)


def _read_only_engine(database_url: str) -> Any:
    """An engine whose sessions cannot write: the dev monitor only ever looks."""
    from sqlalchemy import create_engine

    return create_engine(
        database_url,
        pool_size=1,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5, "options": "-c default_transaction_read_only=on"},
    )


def _get_json(url: str) -> tuple[int | None, dict[str, Any]]:
    """GET a JSON endpoint; (status, body), or (None, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ValueError):
        return None, {}
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    return status, body if isinstance(body, dict) else {}
