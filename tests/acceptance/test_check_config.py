"""Acceptance: `audit-service check-config` as a subprocess against real PostgreSQL and Kafka."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from audit_service.config import Settings

CLI_TIMEOUT_S = 60.0
"""check-config gives Kafka 10 s; the rest is process start-up."""


def _check_config(tmp_path: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUDIT_")}
    env.update(environ)
    return subprocess.run(
        [sys.executable, "-m", "audit_service", "check-config"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)


def test_check_config_prints_the_effective_settings_and_passes(
    settings: Settings, tmp_path: Path
) -> None:
    result = _check_config(
        tmp_path, AUDIT_DATABASE_URL=settings.database_url,
        AUDIT_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        AUDIT_KAFKA_TOPIC=settings.kafka_topic, AUDIT_BATCH_SIZE="750")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "  batch_size = 750" in lines
    assert "  log_format = auto" in lines
    assert lines[-3].startswith("database: OK, schema at revision ")
    assert lines[-2:] == [f"kafka: OK, topic {settings.kafka_topic} has 4 partitions",
                          "check-config: OK"]


def test_check_config_reports_each_failure_and_never_prints_the_password(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    missing_topic = f"audit.events.missing-{uuid.uuid4().hex[:8]}"

    result = _check_config(
        tmp_path, AUDIT_DATABASE_URL="postgresql+psycopg2://audit:s3cret-pw@127.0.0.1:1/audit",
        AUDIT_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, AUDIT_KAFKA_TOPIC=missing_topic)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "s3cret-pw" not in output
    assert "  database_url = postgresql+psycopg2://audit:***@127.0.0.1:1/audit" in result.stdout
    assert "database: FAILED: cannot reach the database" in result.stdout
    assert f"kafka: FAILED: topic {missing_topic} does not exist" in result.stdout
    assert result.stderr.strip() == (
        "audit-service: error: check-config: database and kafka check failed")
