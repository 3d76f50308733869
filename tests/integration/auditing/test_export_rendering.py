"""`export` renders each line straight from the row PostgreSQL returns; the lines must be
the spec's (docs/hash-chain.md) byte for byte, for values of every shape as PostgreSQL
stores and returns them (JSONB numbers and key order, TEXT[] quoting, timestamps).

The reference is the spec's formula written out here with the standard library, and the
export is checked again by `verify --file` and by an independent pass over its lines.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import create_engine, insert
from support import wire_event

from audit_service.auditing.export import WRITE_LINES
from audit_service.cli import main
from audit_service.core.chain import (
    GENESIS_PREVIOUS_HASH,
    ChainHead,
    advance,
    chain_event,
    genesis_record,
    parse_timestamp,
)
from audit_service.core.events import ValidationLimits, parse_event
from audit_service.storage.models import AuditChainState, AuditRecord

TENANT = "tenant.x:1-a"
CREATED = datetime(2026, 11, 26, 16, 19, 16, 999999, tzinfo=UTC)
TRICKY_CONTEXT = {
    "llm_provider": "Ünïcødé 日本語 😀 \"q\" \\ \t\n\x01\x7f", "llm_cost_usd": 1e-07,
    "llm_input_tokens": 2**53 + 1, "big": 2**70, "exp": 1e16, "huge": 1.5e300, "tiny": 5e-324,
    "sum": 0.1 + 0.2, "negzero": -0.0, "empty": "", "none": None, "t": True, "list": [],
    "nested": {"b": [3, 1, {"zz": 1, "a": [{}]}], "a": None, "\ufffd": 1, "😀": 2, "": 0},
}
ARRAY_ITEMS = ["a,b", "{x}", '"q"', "\\", "NULL", "", " sp ", "ü😀"]


def _wire_events() -> list[dict[str, Any]]:
    return [
        wire_event(TENANT, context=TRICKY_CONTEXT, entity_ids=ARRAY_ITEMS,
                   actor_permissions=ARRAY_ITEMS[::-1], alert_id="Ålert",
                   investigation_id="", source_service="svc/ü",
                   timestamp="2026-11-26T21:49:16.123+05:30"),
        wire_event(TENANT, timestamp="2026-11-26T16:19:16Z"),  # optional fields: defaults
        wire_event(TENANT, decision={"confidence": 0.0, "recommended_actions": ["x"]},
                   outcome={"analyst_feedback_correct": None, "duration_ms": 0},
                   severity="warning", timestamp="2026-11-26T16:19:16.1234567Z"),
    ]


def _chain(wires: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Records exactly as the writer chains them (events validated as it does)."""
    records = [genesis_record(TENANT, CREATED)]
    for n, wire in enumerate(_wire_events() if wires is None else wires):
        event = parse_event(TENANT.encode(), json.dumps(wire).encode(), ValidationLimits(),
                            CREATED)
        head = advance(ChainHead.empty(TENANT), records[-1])
        records.append(chain_event(head, event, CREATED + timedelta(microseconds=n + 1)))
    return records


def _store(url: str, records: list[dict[str, Any]]) -> None:
    rows = [{**record, "timestamp": parse_timestamp(record["timestamp"]),
             "ingested_at": parse_timestamp(record["ingested_at"])} for record in records]
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(insert(AuditRecord), rows)
        connection.execute(insert(AuditChainState).values(
            tenant_id=TENANT, last_sequence=len(records) - 1,
            last_hash=records[-1]["record_hash"]))
    engine.dispose()


def _cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"AUDIT_DATABASE_URL": url})


def _spec_line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _independent_check(lines: list[bytes]) -> str:
    """The spec's own check of an export (docs/hash-chain.md); returns the head hash."""
    previous = GENESIS_PREVIOUS_HASH
    for sequence, line in enumerate(lines):
        record = json.loads(line)
        claimed = record.pop("record_hash")
        hashed = json.dumps(record, sort_keys=True, separators=(",", ":"))
        assert hashlib.sha256(hashed.encode()).hexdigest() == claimed
        assert (record["sequence_number"], record["previous_hash"]) == (sequence, previous)
        previous = claimed
    return previous


def _exported_as_the_spec_renders(url: str, records: list[dict[str, Any]],
                                  path: Path) -> Result:
    """Store `records`, export them to `path`, and check the file line by line against
    the spec's rendering and its own check; returns the export's CLI result."""
    _store(url, records)
    result = _cli(url, "export", "--tenant", TENANT, "--output", str(path))
    assert result.exit_code == 0, result.output
    exported = path.read_bytes()
    assert exported == b"".join(_spec_line(record) for record in records)
    assert _independent_check(exported.splitlines(keepends=True)) == records[-1]["record_hash"]
    return result


def test_export_lines_are_the_spec_rendering_of_every_field_shape(
    database_url: str, tmp_path: Path
) -> None:
    records = _chain()
    path = tmp_path / "export.jsonl"
    result = _exported_as_the_spec_renders(database_url, records, path)
    head = records[-1]["record_hash"]
    assert f"last record_hash {head}" in result.output
    offline = CliRunner().invoke(main, [
        "verify", "--file", str(path), "--expect-previous", GENESIS_PREVIOUS_HASH,
        "--expect-head", head])
    assert offline.exit_code == 0, offline.output
    verified = _cli(database_url, "verify", "--tenant", TENANT)
    assert verified.exit_code == 0, verified.output
    assert re.search(rf"{re.escape(TENANT)}: OK, {len(records)} records", verified.output)


def test_a_range_export_is_the_same_lines(database_url: str, tmp_path: Path) -> None:
    records = _chain()
    _store(database_url, records)
    path = tmp_path / "range.jsonl"
    result = _cli(database_url, "export", "--tenant", TENANT, "--from-seq", "1", "--to-seq",
                  "2", "--output", str(path))
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == b"".join(_spec_line(record) for record in records[1:3])


def test_an_export_of_several_writes_has_every_line_once_in_order(
    database_url: str, tmp_path: Path
) -> None:
    # Lines are written WRITE_LINES at a time: cover two full writes and a partial one.
    wires = [wire_event(TENANT, timestamp="2026-11-26T16:19:16Z")
             for _ in range(2 * WRITE_LINES + 3)]
    path = tmp_path / "long.jsonl"
    _exported_as_the_spec_renders(database_url, _chain(wires), path)
    exported = path.read_bytes()
    piped = _cli(database_url, "export", "--tenant", TENANT, "--output", "-")
    assert piped.exit_code == 0
    assert piped.stdout_bytes == exported
