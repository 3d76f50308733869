"""Export and verify against a real pipeline run: Kafka -> daemon -> PostgreSQL -> export ->
offline verify, and `verify` in the database catching every kind of tampering.

One pipeline run per module (the first consumer-group join costs seconds); each test gets
its own copy of the resulting database, so tampering in one test cannot leak into another.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, insert, text
from support import (
    database_url_for,
    new_topic,
    produce_events,
    records_of,
    run_until_idle,
    scalar,
    service_settings,
    temporary_database,
    wire_event,
)

from audit_service.cli import main
from audit_service.core.chain import (
    GENESIS_PREVIOUS_HASH,
    HASHED_FIELDS,
    ChainHead,
    chain_event,
    parse_timestamp,
)
from audit_service.storage.models import AuditChainState, AuditRecord
from audit_service.storage.reader import AuditReader

TENANT = "tenant-x"
OTHER = "tenant-y"
EVENTS = 12
"""Events of TENANT; with genesis its chain holds sequences 0..12."""
VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "chain.jsonl"
ZEROS = GENESIS_PREVIOUS_HASH


def _events() -> list[dict]:
    tricky = {"llm_provider": "Ünïcødé 日本語 😀", "llm_cost_usd": 1e-07,
              "llm_input_tokens": 2**53 + 1, "big": 2**70, "exp": 1e16, "empty": "",
              "nested": {"b": [3, 1, 2], "a": None}}
    events = [wire_event(TENANT, context=dict(tricky, n=n), alert_id=f"Ålert-{n}",
                         entity_ids=["host:ü", ""]) for n in range(EVENTS)]
    return events + [wire_event(OTHER) for _ in range(3)]


@pytest.fixture(scope="module")
def pipeline_template(
    pg_admin_url: str, template_database: str, kafka_bootstrap: str
) -> Iterator[str]:
    """A database filled once through the real pipeline; tests work on copies of it."""
    with temporary_database(pg_admin_url, "audit_export", template_database) as name:
        topic = new_topic(kafka_bootstrap)
        settings = service_settings(database_url_for(pg_admin_url, name), kafka_bootstrap, topic)
        produce_events(kafka_bootstrap, topic, _events())
        assert run_until_idle(settings).chained == EVENTS + 3
        yield name


@pytest.fixture
def url(pg_admin_url: str, pipeline_template: str) -> Iterator[str]:
    """This test's own copy of the pipeline's database."""
    with temporary_database(pg_admin_url, "audit_copy", pipeline_template) as name:
        yield database_url_for(pg_admin_url, name)


def _cli(url: str, *args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={"AUDIT_DATABASE_URL": url}, input=stdin)


def _export(url: str, path: Path, *args: str) -> str:
    """Export TENANT to `path`; returns the head hash the export reported."""
    result = _cli(url, "export", "--tenant", TENANT, "--output", str(path), *args)
    assert result.exit_code == 0, result.output
    match = re.search(r"last record_hash ([0-9a-f]{64})", result.output)
    assert match, result.output
    return match.group(1)


def _offline(path: Path, *args: str) -> Result:
    """`verify --file` with a configuration that would fail if anything read it."""
    return CliRunner().invoke(main, ["verify", "--file", str(path), *args],
                              env={"AUDIT_DATABASE_URL": "not-a-url"})


def _tamper(url: str, *statements: str) -> None:
    """Edit audit_records as a superuser would, append-only triggers disabled."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_records DISABLE TRIGGER USER"))
        for statement in statements:
            connection.execute(text(statement))
        connection.execute(text("ALTER TABLE audit_records ENABLE TRIGGER USER"))
    engine.dispose()


def test_events_through_kafka_export_and_verify_offline(url: str, tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    head = _export(url, path)

    result = _offline(path, "--expect-previous", ZEROS, "--expect-head", head)

    assert result.exit_code == 0, result.output
    assert f"OK, tenant {TENANT}, {EVENTS + 1} records, sequences 0..{EVENTS}" in result.output
    lines = path.read_bytes().splitlines()
    assert len(lines) == EVENTS + 1
    assert all(line.isascii() for line in lines)
    assert [json.loads(line)["sequence_number"] for line in lines] == list(range(EVENTS + 1))
    assert set(json.loads(lines[1])) == {*HASHED_FIELDS, "record_hash"}


def test_any_change_to_an_exported_file_fails_and_names_the_line(
    url: str, tmp_path: Path
) -> None:
    path = tmp_path / "x.jsonl"
    head = _export(url, path)
    lines = path.read_bytes().splitlines(keepends=True)
    anchors = ("--expect-previous", ZEROS, "--expect-head", head)

    def broken(content: list[bytes], where: str) -> None:
        tampered = tmp_path / "tampered.jsonl"
        tampered.write_bytes(b"".join(content))
        result = _offline(tampered, *anchors)
        assert result.exit_code == 1, (where, result.output)
        assert where in result.output, result.output

    middle = 6  # line 7, sequence 6
    for field in (*HASHED_FIELDS, "record_hash"):
        line = bytearray(lines[middle])
        value_at = line.index(b'"%s":' % field.encode()) + len(field) + 4
        line[value_at] ^= 0x01
        broken([*lines[:middle], bytes(line), *lines[middle + 1:]], "at line 7:")
    broken(lines[:5] + lines[6:], "at line 6: tenant 'tenant-x' sequence 6")  # dropped
    broken([*lines[:3], lines[4], lines[3], *lines[5:]], "at line 4:")  # swapped
    broken(lines[:-2], f"at the end: tenant '{TENANT}' head")  # whole lines cut off
    broken([*lines[:-1], lines[-1][:-20]], f"at line {len(lines)}:")  # cut mid-line


def test_export_to_stdout_pipes_into_verify(url: str) -> None:
    exported = _cli(url, "export", "--tenant", OTHER, "--output", "-")
    assert exported.exit_code == 0
    records = exported.stdout_bytes
    assert len(records.splitlines()) == 4
    assert b"exported 4 records" in exported.stderr_bytes

    result = CliRunner().invoke(main, ["verify", "--file", "-"], input=records)
    assert result.exit_code == 0, result.output
    assert f"-: OK, tenant {OTHER}, 4 records" in result.output


def test_a_range_export_verifies_against_its_predecessor(url: str, tmp_path: Path) -> None:
    path = tmp_path / "range.jsonl"
    result = _cli(url, "export", "--tenant", TENANT, "--from-seq", "5", "--to-seq", "9",
                  "--output", str(path))
    assert result.exit_code == 0, result.output
    previous = re.search(r"--expect-previous ([0-9a-f]{64})", result.output)
    assert previous, result.output

    assert _offline(path, "--expect-previous", previous.group(1)).exit_code == 0
    unanchored = _offline(path)
    assert unanchored.exit_code == 0
    assert "records before the first line are not checked" in unanchored.output
    wrong = _offline(path, "--expect-previous", ZEROS)
    assert wrong.exit_code == 1
    assert "at line 1: tenant 'tenant-x' sequence 5 (record #1): broken link" in wrong.output


@pytest.mark.parametrize(("args", "message"), [
    (["--tenant", "nobody"], "tenant 'nobody' has no records in sequences 0.."),
    (["--tenant", TENANT, "--from-seq", "99"], "has no records in sequences 99.."),
    (["--tenant", TENANT, "--from-seq", "5", "--to-seq", "4"], "--to-seq must not be below"),
])
def test_export_usage_errors_leave_no_file(
    url: str, tmp_path: Path, args: list[str], message: str
) -> None:
    path = tmp_path / "out.jsonl"
    result = _cli(url, "export", *args, "--output", str(path))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_export_never_overwrites_a_file(url: str, tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("keep me\n")
    result = _cli(url, "export", "--tenant", TENANT, "--output", str(path))
    assert result.exit_code == 2
    assert "already exists" in result.output
    assert path.read_text() == "keep me\n"


def test_export_all_writes_each_tenant_as_its_own_export(url: str, tmp_path: Path) -> None:
    directory = tmp_path / "archive"
    result = _cli(url, "export", "--all", "--output-dir", str(directory))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in directory.iterdir()) == [f"{TENANT}.jsonl", f"{OTHER}.jsonl"]
    assert f"exported {EVENTS + 1 + 4} records of 2 tenants to {directory}" in result.output

    for tenant, records in ((TENANT, EVENTS + 1), (OTHER, 4)):
        single = tmp_path / f"single-{tenant}.jsonl"
        assert _cli(url, "export", "--tenant", tenant, "--output", str(single)).exit_code == 0
        path = directory / f"{tenant}.jsonl"
        assert path.read_bytes() == single.read_bytes()
        head = re.search(rf"{records} records of {tenant} to {path}, last record_hash "
                         r"([0-9a-f]{64})", result.output)
        assert head, result.output
        offline = _offline(path, "--expect-previous", ZEROS, "--expect-head", head.group(1))
        assert offline.exit_code == 0, offline.output


@pytest.mark.parametrize(("args", "message"), [
    (["--all"], "--all exports whole chains into --output-dir DIR"),
    (["--all", "--output-dir", "out", "--tenant", TENANT], "drop --tenant"),
    (["--all", "--output-dir", "out", "--to-seq", "0"], "drop --to-seq"),
    (["--all", "--output-dir", "out", "--from-seq", "3", "--output", "x"],
     "drop --from-seq, --output"),
    (["--tenant", TENANT, "--output-dir", "out"], "--output-dir goes with --all"),
    ([], "give --tenant T, or --all --output-dir DIR"),
])
def test_export_all_usage_errors_write_nothing(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = _cli(url, "export", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_export_all_stops_before_writing_when_a_file_exists(url: str, tmp_path: Path) -> None:
    (tmp_path / f"{OTHER}.jsonl").write_text("keep me\n")
    result = _cli(url, "export", "--all", "--output-dir", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert f"1 export files already exist ({tmp_path / OTHER}.jsonl)" in result.output
    assert [p.name for p in tmp_path.iterdir()] == [f"{OTHER}.jsonl"]
    assert (tmp_path / f"{OTHER}.jsonl").read_text() == "keep me\n"


@pytest.mark.parametrize(("tenant", "message"), [
    ("../escaped", "tenant id '../escaped' is not a valid tenant id"),
    ("tenant-ghost", "tenant 'tenant-ghost' has a chain head but no records"),
])
def test_export_all_refuses_a_store_it_cannot_export_whole(
    url: str, tmp_path: Path, tenant: str, message: str
) -> None:
    """A head no event could make (a tampered store): nothing is written, and never a file
    outside the directory."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(insert(AuditChainState).values(
            tenant_id=tenant, last_sequence=0, last_hash=ZEROS))
    engine.dispose()
    directory = tmp_path / "archive"
    result = _cli(url, "export", "--all", "--output-dir", str(directory))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_the_vectors_survive_a_round_trip_through_postgresql(url: str, tmp_path: Path) -> None:
    """Stored as the writer stores them, exported byte for byte as the vector file."""
    records = [json.loads(line) for line in VECTORS.read_bytes().splitlines()]
    rows = [{**record, "timestamp": parse_timestamp(record["timestamp"]),
             "ingested_at": parse_timestamp(record["ingested_at"])} for record in records]
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(insert(AuditRecord), rows)
        connection.execute(insert(AuditChainState).values(
            tenant_id="tenant-vectors", last_sequence=8, last_hash=records[-1]["record_hash"]))
    engine.dispose()

    path = tmp_path / "vectors.jsonl"
    result = _cli(url, "export", "--tenant", "tenant-vectors", "--output", str(path))
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == VECTORS.read_bytes()
    assert _cli(url, "verify", "--tenant", "tenant-vectors").exit_code == 0


@pytest.mark.parametrize(("statements", "evidence"), [
    (["UPDATE audit_records SET context = jsonb_set(context, '{big}', '1180591620717411303425')"
      " WHERE tenant_id = 'tenant-x' AND sequence_number = 4"],
     "sequence 4 (record #5): hash mismatch"),
    (["DELETE FROM audit_records WHERE tenant_id = 'tenant-x' AND sequence_number = 7"],
     "sequence 8 (record #8): sequence gap: expected sequence 7, found sequence 8"),
    (["DELETE FROM audit_records WHERE tenant_id = 'tenant-x' AND sequence_number >= 10"],
     "head (record #11): head mismatch: expected last record 12"),
])
def test_database_verify_catches_tampering(
    url: str, statements: list[str], evidence: str
) -> None:
    _tamper(url, *statements)

    result = _cli(url, "verify")

    assert result.exit_code == 1, result.output
    assert f"{TENANT}: BROKEN: tenant '{TENANT}' {evidence}" in result.output
    assert f"{OTHER}: OK" in result.output


def test_database_verify_catches_a_forged_record_that_hashes_and_links(url: str) -> None:
    engine = create_engine(url)
    last = records_of(AuditReader(engine), TENANT)[-1]
    head = ChainHead(TENANT, last["sequence_number"], last["record_hash"])
    forged = chain_event(head, {**last, "audit_id": str(uuid.uuid4()), "actor_id": "mallory"},
                         parse_timestamp(last["ingested_at"]) + timedelta(seconds=1))
    with engine.begin() as connection:
        connection.execute(insert(AuditRecord), [{
            **forged, "timestamp": parse_timestamp(forged["timestamp"]),
            "ingested_at": parse_timestamp(forged["ingested_at"])}])
    engine.dispose()

    result = _cli(url, "verify", "--tenant", TENANT)

    assert result.exit_code == 1
    assert (f"head (record #{EVENTS + 3}): head mismatch: expected last record {EVENTS} with "
            f"hash {last['record_hash']}, found last record {EVENTS + 1}") in result.output


def test_verify_a_range_checks_its_link_and_its_end(url: str) -> None:
    ok = _cli(url, "verify", "--tenant", TENANT, "--from-seq", "3", "--to-seq", "8")
    assert ok.exit_code == 0, ok.output
    assert f"{TENANT}: OK, 6 records, sequences 3..8" in ok.output

    _tamper(url, "DELETE FROM audit_records WHERE tenant_id = 'tenant-x' AND sequence_number = 8")

    end = _cli(url, "verify", "--tenant", TENANT, "--from-seq", "3", "--to-seq", "8")
    assert end.exit_code == 1
    assert "sequence 8 (record #6): sequence gap: expected sequence 8, found end of records" in (
        end.output)
    start = _cli(url, "verify", "--tenant", TENANT, "--from-seq", "9")
    assert start.exit_code == 1
    assert "sequence 9 (record #1): broken link: expected a link to record 8, found no " \
           "record 8" in start.output
    inside = _cli(url, "verify", "--tenant", TENANT, "--from-seq", "4", "--to-seq", "7")
    assert inside.exit_code == 0


def test_verify_in_parallel_reports_as_in_sequence_and_logs_each_tenant(url: str) -> None:
    _tamper(url, "UPDATE audit_records SET actor_id = 'mallory' "
                 "WHERE tenant_id = 'tenant-y' AND sequence_number = 2")

    sequential = _cli(url, "verify", "--json")
    parallel = _cli(url, "verify", "--json", "--jobs", "2")

    assert sequential.exit_code == parallel.exit_code == 1
    one, two = json.loads(sequential.stdout), json.loads(parallel.stdout)
    assert one["tenants"] == two["tenants"]
    assert (one["chains"], one["broken"], one["records"]) == (2, 1, EVENTS + 1 + 2)
    assert two["tenants"][1]["break"]["kind"] == "hash mismatch"
    assert two["tenants"][1]["break"]["sequence_number"] == 2
    logged = scalar(url, "SELECT json_agg(json_build_array(tenant_id, valid, records_checked, "
                         "from_sequence, to_sequence, errors->0->>'kind') ORDER BY id) "
                         "FROM audit_verification_log")
    run = [[TENANT, True, EVENTS + 1, 0, EVENTS], [OTHER, False, 2, 0, 1, "hash mismatch"]]
    assert logged == [run[0] + [None], run[1]] * 2
