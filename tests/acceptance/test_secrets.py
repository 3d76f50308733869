"""Acceptance: the database password comes from a file or the environment, and is never
printed: not in the daemon's logs, /health, /ready, /metrics, `check-config`, `status`,
nor in the one-line error when it is wrong.

The test servers trust every local connection, so this module makes PostgreSQL check
passwords for its own two login roles only (two lines prepended to pg_hba.conf, removed
again afterwards): a wrong password must really be refused.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy
from running_daemon import answering, cli_environ, http_get, run_cli
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from support import ServiceProcess, encode, produce, scalar, wire_event

from audit_service.config import Settings
from audit_service.dev.devstack import free_port

READY_TIMEOUT_S = 30.0
HBA_RELOAD_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PasswordRoles:
    writer: str
    reader: str
    password: str
    """Both roles' password: URL metacharacters, so it is also looked for URL-encoded."""

    def leaks(self, output: str) -> list[str]:
        forms = {self.password, quote(self.password, safe=""), quote(self.password)}
        return sorted(form for form in forms if form in output)


def _admin(admin_url: str, statement: str, **params: object) -> object:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            result = connection.execute(text(statement), params)
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def _write_server_file(admin_url: str, path: str, content: str) -> None:
    """Write a file as the PostgreSQL server (it may run on another host or user)."""
    oid = _admin(admin_url, "SELECT lo_from_bytea(0, convert_to(:content, 'UTF8'))",
                 content=content)
    try:
        _admin(admin_url, "SELECT lo_export(:oid, :path)", oid=oid, path=path)
    finally:
        _admin(admin_url, "SELECT lo_unlink(:oid)", oid=oid)


def _refuses_wrong_password(url: str) -> bool:
    engine = create_engine(make_url(url).set(password="not-the-password"))
    try:
        with engine.connect():
            return False
    except sqlalchemy.exc.OperationalError:
        return True
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def password_roles(pg_admin_url: str) -> Iterator[PasswordRoles]:
    """A writer and a reader login that PostgreSQL really authenticates by password."""
    suffix = uuid.uuid4().hex[:10]
    roles = PasswordRoles(f"audit_pw_w_{suffix}", f"audit_pw_r_{suffix}",
                          f"pw:{secrets.token_hex(8)}/@%?#")
    for role, group in ((roles.writer, "audit_writer"), (roles.reader, "audit_reader")):
        # psycopg2 interpolates parameters client-side, so a utility statement takes one.
        _admin(pg_admin_url, f"CREATE ROLE {role} LOGIN PASSWORD :password IN ROLE {group}",
               password=roles.password)
    hba_file = str(_admin(pg_admin_url, "SHOW hba_file"))
    original = str(_admin(pg_admin_url, "SELECT pg_read_file(:path)", path=hba_file))
    users = f"{roles.writer},{roles.reader}"
    _write_server_file(pg_admin_url, hba_file, f"local all {users} scram-sha-256\n"
                       f"host all {users} all scram-sha-256\n" + original)
    try:
        assert _admin(pg_admin_url, "SELECT count(*) FROM pg_hba_file_rules "
                      "WHERE error IS NOT NULL") == 0
        _admin(pg_admin_url, "SELECT pg_reload_conf()")
        probe = make_url(pg_admin_url).set(username=roles.reader, password=roles.password)
        deadline = time.monotonic() + HBA_RELOAD_TIMEOUT_S
        while not _refuses_wrong_password(probe.render_as_string(hide_password=False)):
            assert time.monotonic() < deadline, "PostgreSQL does not check passwords"
            time.sleep(0.1)
        yield roles
    finally:
        _write_server_file(pg_admin_url, hba_file, original)
        _admin(pg_admin_url, "SELECT pg_reload_conf()")
        for role in (roles.writer, roles.reader):
            _admin(pg_admin_url, f"DROP ROLE IF EXISTS {role}")


def _url_without_password(database_url: str, role: str) -> str:
    return make_url(database_url).set(username=role, password=None).render_as_string(
        hide_password=False)


def test_the_password_from_a_file_is_used_and_never_printed(
    settings: Settings, kafka_bootstrap: str, topic: str, password_roles: PasswordRoles,
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "db-password"
    password_file.write_text(password_roles.password + "\n")
    password_file.chmod(0o600)
    port = free_port()
    env = cli_environ(
        AUDIT_DATABASE_URL=_url_without_password(settings.database_url, password_roles.writer),
        AUDIT_DATABASE_PASSWORD_FILE=str(password_file),
        AUDIT_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, AUDIT_KAFKA_TOPIC=topic,
        AUDIT_CONSUMER_GROUP=settings.consumer_group, AUDIT_HEALTH_PORT=str(port),
        AUDIT_KAFKA_SESSION_TIMEOUT_MS="6000", AUDIT_KAFKA_HEARTBEAT_INTERVAL_MS="1000",
        AUDIT_KAFKA_MAX_POLL_INTERVAL_MS="10000", AUDIT_POLL_TIMEOUT_MS="200",
        AUDIT_LOG_LEVEL="DEBUG", AUDIT_LOG_FORMAT="json")
    produce(kafka_bootstrap, topic, [encode(wire_event("tenant-secret")),
                                     (b"tenant-secret", b"not json")])
    daemon = ServiceProcess([], env, tmp_path / "daemon.log", tmp_path)
    try:
        daemon.wait_for(answering(port, "/ready"), READY_TIMEOUT_S, "/ready to answer 200")
        daemon.wait_for(
            lambda: scalar(settings.database_url, "SELECT count(*) FROM audit_records "
                           "WHERE sequence_number > 0") or None,
            READY_TIMEOUT_S, "the event to be chained")
        served = [http_get(port, path) for path in ("/health", "/ready", "/metrics", "/nope")]
        check = run_cli(["check-config"], env, tmp_path)
        # status as the auditor, its password given the other way: in the environment.
        auditor = _url_without_password(settings.database_url, password_roles.reader)
        status = run_cli(["status"], env | {
            "AUDIT_DATABASE_URL": auditor, "AUDIT_DATABASE_PASSWORD_FILE": "",
            "AUDIT_DATABASE_PASSWORD": password_roles.password}, tmp_path)
        assert daemon.stop() == 0, daemon.tail()
    finally:
        daemon.kill()

    assert check.returncode == 0, check.stdout + check.stderr
    assert f"database_password_file = {password_file}" in check.stdout
    assert f"database_url = postgresql+psycopg2://{password_roles.writer}:***@" in check.stdout
    assert status.returncode == 0, status.stdout + status.stderr
    outputs = {"daemon log": daemon.output(), "check-config": check.stdout + check.stderr,
               "status": status.stdout + status.stderr}
    outputs |= {f"GET {path}": f"{headers}{body.decode()}" for path, (_, headers, body) in
                zip(("/health", "/ready", "/metrics", "/nope"), served, strict=True)}
    assert '"level": "DEBUG"' in outputs["daemon log"], "the most verbose log is checked"
    assert {name: password_roles.leaks(text) for name, text in outputs.items()} == {
        name: [] for name in outputs}


@pytest.mark.parametrize("command", [["run"], ["check-config"], ["verify"]],
                         ids=["run", "check-config", "verify"])
def test_a_wrong_password_is_one_line_without_any_password(
    settings: Settings, password_roles: PasswordRoles, tmp_path: Path, command: list[str],
) -> None:
    wrong = f"wrong:{secrets.token_hex(8)}"
    env = cli_environ(
        AUDIT_DATABASE_URL=_url_without_password(settings.database_url, password_roles.writer),
        AUDIT_DATABASE_PASSWORD=wrong, AUDIT_HEALTH_PORT="0",
        AUDIT_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        AUDIT_KAFKA_TOPIC=settings.kafka_topic)

    result = run_cli(command, env, tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    [line] = result.stderr.splitlines()
    assert line.startswith("audit-service: error: "), line
    assert "password authentication failed" in output
    assert wrong not in output and quote(wrong, safe="") not in output
    assert password_roles.leaks(output) == []


def test_an_unreadable_password_file_is_a_one_line_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "db-password"
    env = cli_environ(AUDIT_DATABASE_PASSWORD_FILE=str(missing))

    result = run_cli(["run"], env, tmp_path)

    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr.splitlines() == [
        f"audit-service: error: cannot read database password file {missing}: "
        "No such file or directory (database_password_file from environment variable "
        "AUDIT_DATABASE_PASSWORD_FILE)"]
