"""Append-only storage and tamper detection by `audit-service verify`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from support import produce, produce_events, run_until_idle, wire_event

from audit_service.cli import main
from audit_service.config import Settings

TENANT = "tenant-t"


@pytest.fixture
def chained(settings: Settings, kafka_bootstrap: str, topic: str) -> Settings:
    produce_events(kafka_bootstrap, topic, [wire_event(TENANT) for _ in range(5)])
    produce_events(kafka_bootstrap, topic, [wire_event("tenant-u") for _ in range(2)])
    produce(kafka_bootstrap, topic, [(b"tenant-u", b"{not json")])
    assert run_until_idle(settings).rejected == 1
    return settings


def _verify(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["verify", *args], env={"AUDIT_DATABASE_URL": settings.database_url}
    )
    return result.exit_code, result.output


def _as_superuser_without_triggers(database_url: str, statement: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_records DISABLE TRIGGER USER"))
        connection.execute(text(statement))
        connection.execute(text("ALTER TABLE audit_records ENABLE TRIGGER USER"))
    engine.dispose()


@pytest.mark.parametrize("statement", [
    "UPDATE audit_records SET actor_id = 'mallory' WHERE sequence_number = 2",
    "DELETE FROM audit_records WHERE sequence_number = 2",
    "TRUNCATE audit_records",
    "UPDATE audit_rejected_events SET reason = 'x'",
    "DELETE FROM audit_rejected_events",
    "TRUNCATE audit_rejected_events",
])
def test_modifying_stored_records_is_refused(chained: Settings, statement: str) -> None:
    engine = create_engine(chained.database_url)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(text(statement))
    engine.dispose()


def test_verify_passes_on_an_untouched_store(chained: Settings) -> None:
    code, output = _verify(chained)
    assert code == 0, output
    assert "verify: OK, 2 chains, 9 records intact" in output


@pytest.mark.parametrize(("statement", "kind", "where"), [
    ("UPDATE audit_records SET actor_id = 'mallory' WHERE tenant_id = 'tenant-t' "
     "AND sequence_number = 3", "hash mismatch", "sequence 3"),
    ("UPDATE audit_records SET context = '{\"llm_cost_usd\": 0.2}' WHERE tenant_id = 'tenant-t' "
     "AND sequence_number = 4", "hash mismatch", "sequence 4"),
    ("DELETE FROM audit_records WHERE tenant_id = 'tenant-t' AND sequence_number = 2",
     "sequence gap", "sequence 3"),
    ("DELETE FROM audit_records WHERE tenant_id = 'tenant-t' AND sequence_number = 5",
     "head mismatch", "head"),
])
def test_verify_names_tenant_and_sequence_of_a_tampered_record(
    chained: Settings, statement: str, kind: str, where: str
) -> None:
    _as_superuser_without_triggers(chained.database_url, statement)

    code, output = _verify(chained)

    assert code == 1, output
    assert f"tenant-t: BROKEN: tenant 'tenant-t' {where}" in output
    assert kind in output
    assert "tenant-u: OK" in output


def test_verify_of_one_tenant_ignores_the_others(chained: Settings) -> None:
    _as_superuser_without_triggers(
        chained.database_url,
        "UPDATE audit_records SET actor_id = 'x' WHERE tenant_id = 'tenant-u'",
    )
    assert _verify(chained, "--tenant", TENANT)[0] == 0
    assert _verify(chained, "--tenant", "tenant-u")[0] == 1


def test_verify_of_an_unknown_tenant_is_a_usage_error(chained: Settings) -> None:
    code, output = _verify(chained, "--tenant", "nobody")
    assert code == 2
    assert "has no records" in output
