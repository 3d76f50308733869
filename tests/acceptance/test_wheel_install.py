"""Acceptance: the package as an operator gets it. Build the sdist and, from it, the wheel;
install the wheel into a fresh virtualenv outside the source tree (dependencies from the
runtime lock); then, from an unrelated working directory with no audit.ini and no
checkout in sight, run the installed `audit-service` against the real PostgreSQL and
broker with a plain postgresql:// URL, as operators and libpq tools write it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import (
    encode,
    new_topic,
    process_environ,
    produce,
    scalar,
    scratch_dir,
    service_settings,
    wire_event,
)

from audit_service import __version__
from audit_service.storage.migrations import head_revision

REPO = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"
BUILD_TIMEOUT_S = 120.0
INSTALL_TIMEOUT_S = 180.0
CLI_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 90.0
"""`run --exit-when-idle` joins the group, drains a few dozen events and exits."""
TENANTS = ("tenant-acme", "tenant-globex", "tenant-initech")
EVENTS_PER_TENANT = 12
MALFORMED = (b"tenant-acme", b'{"audit_id": "oops", ')


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path

    @property
    def cli(self) -> str:
        return str(self.venv / "bin" / "audit-service")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def _run(args: list[str], timeout_s: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                            check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, (
        f"{' '.join(args)}: exit {result.returncode}\n{result.stdout[-3000:]}\n"
        f"{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """Built once per module: sdist, then the wheel from the sdist (so both carry the
    migrations), installed with `pip install --require-hashes -r runtime.txt` and
    `pip install --no-deps WHEEL`, the way docs/operations.md installs production."""
    with scratch_dir("audit-wheel-") as scratch:
        dist = scratch / "dist"
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist),
              str(REPO)], BUILD_TIMEOUT_S)
        wheels = sorted(dist.glob("audit_service-*.whl"))
        assert len(wheels) == 1, wheels
        target = scratch / "venv"
        venv.create(target, with_pip=True)
        pip = [str(target / "bin" / "python"), "-m", "pip", "--quiet",
               "--disable-pip-version-check"]
        _run([*pip, "install", "--require-hashes", "-r", str(RUNTIME_LOCK)], INSTALL_TIMEOUT_S)
        _run([*pip, "install", "--no-deps", str(wheels[0])], INSTALL_TIMEOUT_S)
        yield Installed(target, wheels[0])


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory unrelated to the checkout, without an audit.ini."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def _plain_url(fixture_url: str) -> str:
    """The fixtures' postgresql+psycopg2:// URL as an operator writes it."""
    return "postgresql://" + fixture_url.partition("://")[2]


def test_the_wheel_carries_the_package_and_its_migrations(installed: Installed) -> None:
    import zipfile

    names = set(zipfile.ZipFile(installed.wheel).namelist())
    scripts = {name for name in names if name.startswith("audit_service/migration_scripts/")}
    versions = sorted((REPO / "alembic" / "versions").glob("*.py"))
    assert {"audit_service/migration_scripts/env.py",
            "audit_service/migration_scripts/script.py.mako"} <= scripts
    assert {f"audit_service/migration_scripts/versions/{v.name}" for v in versions} <= scripts
    modules = {f"audit_service/{p.relative_to(REPO / 'audit_service')}"
               for p in (REPO / "audit_service").rglob("*.py")}
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    assert not any(name.startswith(("alembic/", "tests/")) for name in names)


def test_the_installed_wheel_migrates_runs_verifies_and_exports(
    installed: Installed, empty_database_url: str, kafka_bootstrap: str, elsewhere: Path,
) -> None:
    database_url = _plain_url(empty_database_url)
    topic = new_topic(kafka_bootstrap)
    settings = service_settings(empty_database_url, kafka_bootstrap, topic)
    env = process_environ(settings, AUDIT_DATABASE_URL=database_url)
    env.pop("PYTHONPATH", None)

    def cli(*args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return _run([installed.cli, *args], timeout_s, env=env, cwd=elsewhere)

    assert cli("--version").stdout.strip() == f"audit-service, version {__version__}"
    where = _run([installed.python, "-c", "import audit_service.storage.migrations as m; "
                  "print(m.__file__); print(m.scripts_dir())"], CLI_TIMEOUT_S,
                 env=env, cwd=elsewhere).stdout.splitlines()
    site = installed.venv.resolve()
    assert all(Path(line).resolve().is_relative_to(site) for line in where), where
    assert where[1].endswith("audit_service/migration_scripts")

    migrated = cli("migrate")
    assert migrated.stdout.strip().endswith(f"is at revision {head_revision()}"), migrated.stdout
    assert cli("migrate").returncode == 0  # idempotent

    events = [wire_event(tenant) for tenant in TENANTS for _ in range(EVENTS_PER_TENANT)]
    produce(kafka_bootstrap, topic, [encode(event) for event in events[:20]])
    produce(kafka_bootstrap, topic, [MALFORMED])
    produce(kafka_bootstrap, topic, [encode(event) for event in events[20:]])

    cli("run", "--exit-when-idle", timeout_s=RUN_TIMEOUT_S)
    assert scalar(empty_database_url, "SELECT count(*) FROM audit_records "
                  "WHERE sequence_number > 0") == len(events)
    assert scalar(empty_database_url, "SELECT count(*) FROM audit_rejected_events") == 1

    verified = json.loads(cli("verify", "--json").stdout)
    assert (verified["ok"], verified["chains"]) == (True, len(TENANTS)), verified
    assert {(r["tenant_id"], r["valid"], r["records_checked"]) for r in verified["tenants"]} \
        == {(tenant, True, EVENTS_PER_TENANT + 1) for tenant in TENANTS}, verified

    export = elsewhere / "acme.jsonl"
    exported = cli("export", "--tenant", TENANTS[0], "--output", str(export))
    head = re.search(r"last record_hash ([0-9a-f]{64})", exported.stderr)
    assert head, exported.stderr
    assert len(export.read_text().splitlines()) == EVENTS_PER_TENANT + 1
    offline = cli("verify", "--file", str(export), "--expect-head", head.group(1))
    assert f"{export.name}: OK, tenant {TENANTS[0]}, {EVENTS_PER_TENANT + 1} records" \
        in offline.stdout, offline.stdout


def test_the_installed_wheel_refuses_another_driver_in_one_line(
    installed: Installed, elsewhere: Path,
) -> None:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("AUDIT_") and key != "PYTHONPATH"}
    env["AUDIT_DATABASE_URL"] = "postgresql+psycopg://audit@127.0.0.1:1/audit"
    result = subprocess.run([installed.cli, "migrate"], env=env, cwd=elsewhere,
                            capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "audit-service: error: invalid setting database_url (from environment variable "
        "AUDIT_DATABASE_URL): unsupported scheme postgresql+psycopg://; use postgresql://, "
        "postgres:// or postgresql+psycopg2:// (libpq query parameters such as "
        "?host=/run/postgresql&sslmode=require are kept)"]
