"""`status` and `rejects` against a real pipeline run (Kafka -> daemon -> PostgreSQL).

One run per module: valid events for three tenants, three messages that must be
quarantined (one with bytes that would hijack a terminal), a `verify`, and then a few
events the daemon has not consumed yet, so lag is non-zero and known.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine
from support import (
    database_url_for,
    encode,
    new_topic,
    produce,
    produce_events,
    run_until_idle,
    service_settings,
    temporary_database,
    wire_event,
)

from audit_service.auditing.status import collect_status, render_status
from audit_service.cli import main
from audit_service.config import Settings
from audit_service.dev.devstack import free_port
from audit_service.storage.reader import AuditReader

TENANTS = {"tenant-a": 5, "tenant-b": 3, "tenant-c": 1}
HOSTILE_VALUE = b'\xff\x1b[2J\x1b]0;pwned\x07{"tenant_id": "tenant-a \xe2\x80\xae"}'
UNCONSUMED = 3


@pytest.fixture(scope="module")
def settings(pg_admin_url: str, template_database: str, kafka_bootstrap: str) -> Iterator[Settings]:
    with temporary_database(pg_admin_url, "audit_status", template_database) as name:
        yield _filled(database_url_for(pg_admin_url, name), kafka_bootstrap)


def _filled(database_url: str, kafka_bootstrap: str) -> Settings:
    """Run the pipeline once over a few tenants, three rejects and a verify, then leave
    UNCONSUMED events on the topic so status shows lag."""
    topic = new_topic(kafka_bootstrap)
    settings = service_settings(database_url, kafka_bootstrap, topic)
    produce_events(kafka_bootstrap, topic,
                   [wire_event(t) for t, count in TENANTS.items() for _ in range(count)])
    produce(kafka_bootstrap, topic, [
        (b"tenant-b", b"{not json"),
        (b"tenant-a", HOSTILE_VALUE),
        encode(wire_event("tenant-c"), key="tenant-a"),
    ], partition=1)
    assert run_until_idle(settings).rejected == 3
    assert _cli(settings, "verify").exit_code == 0
    produce_events(kafka_bootstrap, topic, [wire_event("tenant-a") for _ in range(UNCONSUMED)])
    return settings


def _cli(settings: Settings, *args: str) -> Result:
    env = {"AUDIT_DATABASE_URL": settings.database_url,
           "AUDIT_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "AUDIT_KAFKA_TOPIC": settings.kafka_topic,
           "AUDIT_CONSUMER_GROUP": settings.consumer_group}
    return CliRunner().invoke(main, list(args), env=env)


def test_status_json_accounts_for_every_message(settings: Settings) -> None:
    result = _cli(settings, "status", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    tenants = {t["tenant_id"]: t for t in report["tenants"]}
    assert {t: tenants[t]["records"] for t in tenants} == {t: n + 1 for t, n in TENANTS.items()}
    for tenant in tenants.values():
        assert tenant["last_sequence"] == tenant["records"] - 1
        assert len(tenant["last_hash"]) == 64
        assert tenant["last_event_time"] is not None
        assert tenant["last_verification"]["valid"] is True
    partitions = report["partitions"]
    produced = sum(TENANTS.values()) + 3 + UNCONSUMED
    assert [p["partition"] for p in partitions] == [0, 1, 2, 3]
    # The true end: Tansu's ListOffsets may fall a batch short, the fetch watermark may not.
    assert sum(p["high_watermark"] for p in partitions) == produced
    assert sum(p["stored_offset"] or 0 for p in partitions) == produced - UNCONSUMED
    assert sum(p["lag"] for p in partitions) == UNCONSUMED
    assert report["broker"] == {"reachable": True, "error": None}
    assert report["rejected_events"] == 3
    assert report["last_verified_at"] is not None


def test_status_prints_readable_tables(settings: Settings) -> None:
    result = _cli(settings, "status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("TENANT"))
    assert header.split() == ["TENANT", "LAST", "SEQ", "LAST", "HASH", "LAST", "EVENT",
                              "RECORDS", "LAST", "VERIFY"]
    row = next(line for line in lines if line.startswith("tenant-a "))
    assert row.split()[1] == "5" and row.split()[5] == "6" and " OK " in row
    assert any(line.startswith("PARTITION  STORED OFFSET  HIGH WATERMARK  LAG") for line in lines)
    assert f"broker: reachable, total lag {UNCONSUMED}" in lines
    assert "rejected events: 3" in lines
    assert any(line.startswith("last verification: ") and line.endswith("3 tenants, all OK")
               for line in lines)


def test_status_without_the_broker_still_shows_the_database(settings: Settings) -> None:
    unreachable = settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    engine = create_engine(settings.database_url)
    try:
        report = collect_status(unreachable, AuditReader(engine), broker_timeout_ms=1000)
    finally:
        engine.dispose()

    text = render_status(report)
    assert "broker: UNREACHABLE (cannot reach Kafka at 127.0.0.1:" in text
    assert "tenant-b" in text and "rejected events: 3" in text
    assert all(p.high_watermark is None and p.stored_offset is not None
               for p in report.partitions)
    assert report.as_json()["broker"]["reachable"] is False


def _listed(settings: Settings, *args: str) -> list[dict]:
    result = _cli(settings, "rejects", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_rejects_list_shows_reason_coordinates_and_size(settings: Settings) -> None:
    result = _cli(settings, "rejects", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "REJECTED", "AT", "TOPIC[PARTITION]@OFFSET", "TENANT"]
    newest, hostile, oldest = _listed(settings)
    assert newest["offset"] == hostile["offset"] + 1 == oldest["offset"] + 2
    for document, line in zip([newest, hostile, oldest], lines[1:], strict=True):
        assert line.startswith(f"{document['id']} ")
        assert f"{settings.kafka_topic}[1]@{document['offset']}" in line
    assert "does not match" in lines[1] and "tenant-c" in lines[1]
    assert f"  {len(HOSTILE_VALUE)}  " in lines[2] and "UTF-8" in lines[2]
    assert "JSON" in lines[3]
    assert "\x1b" not in result.stdout

    assert [(d["tenant_id"], d["offset"]) for d in _listed(settings, "--tenant", "tenant-c")] == [
        ("tenant-c", newest["offset"])]


def _hostile_id(settings: Settings) -> int:
    return int(_listed(settings)[1]["id"])


def test_rejects_show_renders_raw_bytes_safely(settings: Settings) -> None:
    hostile = _listed(settings)[1]
    result = _cli(settings, "rejects", "show", str(hostile["id"]))

    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "\x07" not in result.stdout and "\xff" not in result.stdout
    assert (f"value ({len(HOSTILE_VALUE)} bytes): \\xff\\x1b[2J\\x1b]0;pwned\\x07"
            '{"tenant_id": "tenant-a \\u202e"}') in result.stdout
    assert "key (8 bytes): tenant-a" in result.stdout
    assert f"coordinates: {settings.kafka_topic}[1]@{hostile['offset']}" in result.stdout
    assert "reason: value is not valid UTF-8" in result.stdout


def test_rejects_show_json_keeps_the_exact_bytes(settings: Settings) -> None:
    result = _cli(settings, "rejects", "show", str(_hostile_id(settings)), "--json")
    document = json.loads(result.stdout)
    assert base64.b64decode(document["raw_value_base64"]) == HOSTILE_VALUE
    assert base64.b64decode(document["raw_key_base64"]) == b"tenant-a"
    assert document["reason"]


def test_rejects_show_of_an_unknown_id_is_a_usage_error(settings: Settings) -> None:
    result = _cli(settings, "rejects", "show", "999999")
    assert result.exit_code == 2
    assert "no rejected event with id 999999" in result.output
