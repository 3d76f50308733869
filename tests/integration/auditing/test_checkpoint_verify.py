"""`verify --checkpoints` against real PostgreSQL, a real broker and a real daemon's sink.

The hole the checkpoints close: a superuser who rewrites a record and rehashes everything
after it (head included), or who cuts off the newest records and moves the head back,
leaves a chain that plain `verify` accepts. The signed checkpoints in the sink do not
move with it.

One daemon run per module signs the checkpoints (small batches, one checkpoint per batch);
each attack runs on its own copy of that database and of its sink.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from support import (
    chain_of,
    checkpoint_settings,
    database_url_for,
    make_signer_files,
    new_topic,
    produce_events,
    reference_root,
    run_until_idle,
    scalar,
    service_settings,
    sink_lines,
    temporary_database,
    verify_note_independently,
    wire_event,
)

from audit_service.cli import main
from audit_service.config import Settings
from audit_service.core.chain import compute_record_hash
from audit_service.core.checkpoint import SignedCheckpoint, format_checkpoint
from audit_service.core.signed_note import SignerKey, generate_signer, sign_note

TENANT = "tenant-a"
OTHER = "tenant-b"
EVENTS = 120
"""Events of TENANT: with genesis its chain holds 121 records, sequences 0..120."""
OTHER_EVENTS = 30
REWRITTEN = 50
CUT = 20


@dataclass(frozen=True)
class Signed:
    """The module's chained database (a template for copies), its sink and keys."""

    admin_url: str
    database: str
    sink: Path
    key_file: Path
    public_key: Path
    verifier: str

    @property
    def database_url(self) -> str:
        return database_url_for(self.admin_url, self.database)


@pytest.fixture(scope="module")
def signed(pg_admin_url: str, template_database: str, kafka_bootstrap: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    base = tmp_path_factory.mktemp("signed")
    key_file, verifier = make_signer_files(base, "audit-test")
    public_key = base / "audit-test.pub"
    public_key.write_text(verifier + "\n")
    sink = base / "sink"
    sink.mkdir()
    topic = new_topic(kafka_bootstrap)
    with temporary_database(pg_admin_url, "audit_cpv", template_database) as name:
        settings = service_settings(database_url_for(pg_admin_url, name), kafka_bootstrap,
                                    topic, batch_size=10)
        events = [wire_event(TENANT) for _ in range(EVENTS)]
        events += [wire_event(OTHER) for _ in range(OTHER_EVENTS)]
        produce_events(kafka_bootstrap, topic, events)
        run_until_idle(checkpoint_settings(settings, key_file, sink,
                                           checkpoint_every_records=5))
        yield Signed(pg_admin_url, name, sink, key_file, public_key, verifier)


@dataclass(frozen=True)
class Copy:
    database_url: str
    sink: Path
    public_key: Path


@pytest.fixture
def copy(signed: Signed, tmp_path: Path) -> Iterator[Copy]:
    """This test's own copy of the signed database and sink, free to tamper with."""
    sink = tmp_path / "sink"
    shutil.copytree(signed.sink, sink)
    with temporary_database(signed.admin_url, "audit_cpv_copy", signed.database) as name:
        yield Copy(database_url_for(signed.admin_url, name), sink, signed.public_key)


def _cli(database_url: str | None, *args: str) -> tuple[int, str]:
    env = {"AUDIT_DATABASE_URL": database_url} if database_url else {}
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


def _verify(target: Copy | Signed, *args: str) -> tuple[int, str]:
    sink = target.sink
    return _cli(target.database_url, "verify", *args, "--checkpoints", str(sink),
                "--public-key", str(target.public_key))


def _superuser(database_url: str, *statements: tuple[str, dict[str, Any]]) -> None:
    """Run statements as the superuser with every append-only trigger off."""
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("SET session_replication_role = replica"))
            for statement, params in statements:
                connection.execute(text(statement), params)
    finally:
        engine.dispose()


def rewrite_and_rehash(database_url: str, tenant: str, sequence: int) -> None:
    """The attack a chain cannot see: change one record, recompute every later
    previous_hash and record_hash, and move the head to the new last hash."""
    records = chain_of(database_url, tenant)
    records[sequence]["actor_id"] = "mallory"
    previous = records[sequence - 1]["record_hash"]
    updates = []
    for record in records[sequence:]:
        record["previous_hash"] = previous
        record["record_hash"] = previous = compute_record_hash(record)
        updates.append((
            "UPDATE audit_records SET actor_id = :actor, previous_hash = :previous, "
            "record_hash = :hash WHERE tenant_id = :tenant AND sequence_number = :sequence",
            {"actor": record["actor_id"], "previous": record["previous_hash"],
             "hash": record["record_hash"], "tenant": tenant,
             "sequence": record["sequence_number"]}))
    _superuser(database_url, *updates, (
        "UPDATE audit_chain_state SET last_hash = :hash WHERE tenant_id = :tenant",
        {"hash": previous, "tenant": tenant}))


def cut_off_newest(database_url: str, tenant: str, count: int) -> None:
    """Delete the newest `count` records and move the head back to the one before."""
    records = chain_of(database_url, tenant)
    last = records[-count - 1]
    _superuser(database_url, (
        "DELETE FROM audit_records WHERE tenant_id = :tenant AND sequence_number > :last",
        {"tenant": tenant, "last": last["sequence_number"]}), (
        "UPDATE audit_chain_state SET last_sequence = :last, last_hash = :hash "
        "WHERE tenant_id = :tenant",
        {"tenant": tenant, "last": last["sequence_number"], "hash": last["record_hash"]}))


def first_size_beyond(sink: Path, tenant: str, sequence: int) -> int:
    return min(line["tree_size"] for line in sink_lines(sink, tenant)
               if line["tree_size"] > sequence)


def test_an_untouched_store_verifies_with_its_checkpoints(signed: Signed) -> None:
    code, output = _verify(signed)

    assert code == 0, output
    lines = {tenant: len(sink_lines(signed.sink, tenant)) for tenant in (TENANT, OTHER)}
    assert lines[TENANT] > 5
    assert (f"{TENANT}: OK, {EVENTS + 1} records, head {EVENTS} " in output
            and f"{lines[TENANT]} checkpoints verified, newest tree size {EVENTS + 1}"
            in output), output
    assert f"{sum(lines.values())} checkpoints verified in " in output
    in_workers = _verify(signed, "--jobs", "2")
    assert in_workers[0] == 0 and output.splitlines()[:2] == in_workers[1].splitlines()[:2]


def test_an_independent_rfc9162_root_and_ed25519_check_agree(signed: Signed) -> None:
    records = chain_of(signed.database_url, TENANT)
    line = sink_lines(signed.sink, TENANT)[2]
    root = reference_root([bytes.fromhex(r["record_hash"])
                           for r in records[: line["tree_size"]]])

    text_ = verify_note_independently(line["note"], signed.verifier)

    assert text_ == (f"audit-test/{TENANT}\n{line['tree_size']}\n"
                     f"{base64.b64encode(root).decode()}\n")
    code, output = _cli(signed.database_url, "verify", "--json",
                        "--checkpoints", str(signed.sink / f"checkpoints-{TENANT}.jsonl"),
                        "--public-key", str(signed.public_key), "--tenant", TENANT)
    assert code == 0, output
    report = json.loads(output)["tenants"][0]["checkpoints"]
    assert report["verified"] == len(sink_lines(signed.sink, TENANT))
    assert report["failures"] == []


def test_a_rewritten_and_rehashed_chain_passes_verify_but_not_its_checkpoints(
    copy: Copy,
) -> None:
    rewrite_and_rehash(copy.database_url, TENANT, REWRITTEN)

    # The hole: every hash and link recomputes, the head matches. Nothing to see.
    plain_code, plain = _cli(copy.database_url, "verify")
    assert plain_code == 0, plain

    code, output = _verify(copy)

    size = first_size_beyond(copy.sink, TENANT, REWRITTEN)
    assert code == 1, output
    assert f"{TENANT}: BROKEN: tenant '{TENANT}' tree size {size} (checkpoints-{TENANT}.jsonl" \
        in output, output
    assert "root hash does not match the records" in output
    assert f"{OTHER}: OK" in output
    assert "verify: FAILED, 1 of 2 chains broken" in output
    logged = scalar(copy.database_url,
                    "SELECT errors FROM audit_verification_log WHERE tenant_id = :t AND NOT valid",
                    t=TENANT)
    assert logged[0]["kind"] == "checkpoint" and logged[0]["tree_size"] == size


def test_cutting_off_the_newest_records_passes_verify_but_not_its_checkpoints(
    copy: Copy,
) -> None:
    cut_off_newest(copy.database_url, TENANT, CUT)

    assert _cli(copy.database_url, "verify")[0] == 0

    code, output = _verify(copy)

    assert code == 1, output
    assert (f"{TENANT}: BROKEN: tenant '{TENANT}' tree size {EVENTS + 1} "
            f"(checkpoints-{TENANT}.jsonl") in output, output
    assert (f"truncated: head at tree size {EVENTS + 1 - CUT} is behind checkpoint "
            f"{EVENTS + 1} ({CUT} signed records are gone)") in output


def test_a_tenant_removed_from_the_database_fails(copy: Copy) -> None:
    _superuser(copy.database_url,
               ("DELETE FROM audit_records WHERE tenant_id = :t", {"t": OTHER}),
               ("DELETE FROM audit_chain_state WHERE tenant_id = :t", {"t": OTHER}))
    assert _cli(copy.database_url, "verify")[0] == 0

    code, output = _verify(copy)

    assert code == 1, output
    assert f"{OTHER}: BROKEN: tenant '{OTHER}' tree size {OTHER_EVENTS + 1}" in output
    assert "all removed: the tenant has no records in the database" in output
    assert f"{TENANT}: OK" in output


def test_a_tenant_without_checkpoints_is_reported_not_failed(copy: Copy) -> None:
    (copy.sink / f"checkpoints-{OTHER}.jsonl").unlink()

    code, output = _verify(copy)

    assert code == 0, output
    assert f"{OTHER}: OK, {OTHER_EVENTS + 1} records" in output
    assert "no checkpoints in the sink (a new tenant?)" in output
    assert f"note: 1 tenant has no checkpoints in the sink (new, or its sink file is " \
           f"missing): {OTHER}" in output


def _signed_line(signer: SignerKey, size: int, root: bytes, *, tenant: str = TENANT,
                 origin_tenant: str = TENANT) -> str:
    note = sign_note(format_checkpoint(f"{signer.name}/{origin_tenant}", size, root),
                     [signer])
    return SignedCheckpoint(tenant, size, root, note).to_sink_line()


def _bad_signature(line: dict[str, Any], _signer: SignerKey) -> str:
    text_, _, signature = line["note"].rstrip("\n").rpartition("\n")
    dash, name, data = signature.split(" ")
    raw = bytearray(base64.b64decode(data))
    raw[10] ^= 1
    line["note"] = f"{text_}\n{dash} {name} {base64.b64encode(bytes(raw)).decode()}\n"
    return json.dumps(line) + "\n"


def _unknown_key(line: dict[str, Any], _signer: SignerKey) -> str:
    impostor = generate_signer("audit-test")  # the same name, another key
    return _signed_line(impostor, line["tree_size"], base64.b64decode(line["root_hash"]))


def _other_tenants_origin(line: dict[str, Any], signer: SignerKey) -> str:
    return _signed_line(signer, line["tree_size"], base64.b64decode(line["root_hash"]),
                        origin_tenant=OTHER)


def _wrong_root(line: dict[str, Any], signer: SignerKey) -> str:
    return _signed_line(signer, line["tree_size"], hashlib.sha256(b"forged").digest())


def _fields_disagree(line: dict[str, Any], _signer: SignerKey) -> str:
    line["tree_size"] += 1
    return json.dumps(line) + "\n"


@pytest.mark.parametrize(("damage", "reason"), [
    (_bad_signature, "signature not accepted: invalid signature for key audit-test+"),
    (_unknown_key, "signature not accepted: note has no signature from a known key"),
    (_other_tenants_origin, f"origin 'audit-test/{OTHER}' is not <origin>/{TENANT} "
                            f"(it names tenant '{OTHER}')"),
    (_wrong_root, "root hash does not match the records: signed "),
    (_fields_disagree, "the line's tree_size "),
    (lambda _line, _signer: "{not json\n", "malformed line: not a JSON object"),
])
def test_a_forged_or_damaged_checkpoint_fails_with_its_reason(
    signed: Signed, tmp_path: Path, damage: Any, reason: str
) -> None:
    sink = tmp_path / "sink"
    shutil.copytree(signed.sink, sink)
    path = sink / f"checkpoints-{TENANT}.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    signer = SignerKey.parse(signed.key_file.read_text().strip())
    lines[2] = damage(json.loads(lines[2]), signer)
    path.write_text("".join(lines))

    code, output = _cli(signed.database_url, "verify", "--checkpoints", str(sink),
                        "--public-key", str(signed.public_key))

    assert code == 1, output
    assert f"{TENANT}: BROKEN: tenant '{TENANT}' " in output
    assert f"(checkpoints-{TENANT}.jsonl line 3): {reason}" in output, output
    assert f"{OTHER}: OK" in output


def test_sizes_going_backwards_or_two_roots_for_one_size_fail(
    signed: Signed, tmp_path: Path
) -> None:
    sink = tmp_path / "sink"
    shutil.copytree(signed.sink, sink)
    path = sink / f"checkpoints-{TENANT}.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    signer = SignerKey.parse(signed.key_file.read_text().strip())
    newest = json.loads(lines[-1])
    fork = _signed_line(signer, newest["tree_size"], hashlib.sha256(b"fork").digest())
    path.write_text("".join([*lines, lines[1], fork]))

    code, output = _cli(signed.database_url, "verify", "--json", "--checkpoints", str(sink),
                        "--public-key", str(signed.public_key), "--tenant", TENANT)

    assert code == 1, output
    failures = json.loads(output)["tenants"][0]["checkpoints"]["failures"]
    reasons = [(f["line"], f["reason"]) for f in failures]
    assert reasons == [
        (len(lines) + 1, f"tree size goes backwards (after tree size {newest['tree_size']} "
                         f"on line {len(lines)})"),
        (len(lines) + 2, "a second root for the same tree size: "
                         f"{base64.b64encode(hashlib.sha256(b'fork').digest()).decode()}, "
                         f"line {len(lines)} signed {newest['root_hash']}"),
    ]


def test_rotated_keys_verify_together_and_fail_alone(
    settings: Settings, tmp_path: Path
) -> None:
    sink = tmp_path / "sink"
    sink.mkdir()
    old_key, old_verifier = make_signer_files(tmp_path, "audit-2026")
    new_key, new_verifier = make_signer_files(tmp_path, "audit-2027")
    (tmp_path / "audit-2026.pub").write_text(old_verifier + "\n")
    (tmp_path / "audit-2027.pub").write_text(new_verifier + "\n")
    for key_file in (old_key, new_key):
        produce_events(settings.kafka_bootstrap_servers, settings.kafka_topic,
                       [wire_event(TENANT) for _ in range(12)])
        run_until_idle(checkpoint_settings(settings, key_file, sink,
                                           checkpoint_every_records=5))
    names = [line["note"].rsplit("\u2014 ", 1)[1].split(" ")[0]
             for line in sink_lines(sink, TENANT)]
    assert names[0] == "audit-2026" and names[-1] == "audit-2027", names

    def verify(*keys: str) -> tuple[int, str]:
        options = [option for key in keys for option in ("--public-key", str(tmp_path / key))]
        return _cli(settings.database_url, "verify", "--checkpoints", str(sink), *options)

    code, output = verify("audit-2026.pub", "audit-2027.pub")
    assert code == 0, output
    assert f"{len(names)} checkpoints verified, newest tree size 25" in output
    for alone, unknown in (("audit-2026.pub", "audit-2027"), ("audit-2027.pub", "audit-2026")):
        code, output = verify(alone)
        assert code == 1, output
        line = names.index(unknown) + 1
        assert (f"(checkpoints-{TENANT}.jsonl line {line}): signature not accepted: note has "
                "no signature from a known key") in output, output


def _export(database_url: str, tenant: str, target: Path) -> Path:
    code, output = _cli(database_url, "export", "--tenant", tenant, "--output", str(target))
    assert code == 0, output
    return target


def _verify_offline(export: Path, sink: Path, public_key: Path) -> tuple[int, str]:
    return _cli(None, "verify", "--file", str(export), "--checkpoints", str(sink),
                "--public-key", str(public_key))


def test_an_export_verifies_offline_against_the_sink(signed: Signed, tmp_path: Path) -> None:
    export = _export(signed.database_url, TENANT, tmp_path / "a.jsonl")

    code, output = _verify_offline(export, signed.sink, signed.public_key)

    assert code == 0, output
    count = len(sink_lines(signed.sink, TENANT))
    assert (f"{export}: OK, tenant {TENANT}, {EVENTS + 1} records, sequences 0..{EVENTS}"
            in output and f"{count} checkpoints verified, newest tree size {EVENTS + 1}"
            in output), output
    assert (f"checkpoints-{OTHER}.jsonl: {len(sink_lines(signed.sink, OTHER))} checkpoints "
            "signed, up to tree size 31, not compared: no export of this tenant given"
            in output)


def test_a_truncated_or_rewritten_export_fails_offline(copy: Copy, tmp_path: Path) -> None:
    export = _export(copy.database_url, TENANT, tmp_path / "a.jsonl")
    lines = export.read_text().splitlines(keepends=True)
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("".join(lines[:-CUT]))

    code, output = _verify_offline(truncated, copy.sink, copy.public_key)

    assert code == 1, output
    assert (f"{truncated}: BROKEN: tenant '{TENANT}' tree size {EVENTS + 1} "
            f"(checkpoints-{TENANT}.jsonl") in output, output
    assert f"truncated: head at tree size {EVENTS + 1 - CUT} is behind checkpoint" in output

    rewrite_and_rehash(copy.database_url, TENANT, REWRITTEN)
    rewritten = _export(copy.database_url, TENANT, tmp_path / "rewritten.jsonl")
    code, output = _verify_offline(rewritten, copy.sink, copy.public_key)
    assert code == 1, output
    size = first_size_beyond(copy.sink, TENANT, REWRITTEN)
    assert f"tree size {size} (checkpoints-{TENANT}.jsonl" in output
    assert "root hash does not match the records" in output

    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(lines).replace('"actor_id":"triage-agent"',
                                             '"actor_id":"mallory"', 1))
    code, output = _verify_offline(edited, copy.sink, copy.public_key)
    assert code == 1, output
    assert f"{edited}: BROKEN at line 2: tenant '{TENANT}' sequence 1" in output


def test_checkpoints_list_and_publish(signed: Signed, tmp_path: Path) -> None:
    code, output = _cli(signed.database_url, "checkpoints", "list", "--tenant", OTHER)
    assert code == 0, output
    rows = output.splitlines()
    assert rows[0].split() == ["TENANT", "TREE", "SIZE", "ROOT", "KEY", "CREATED", "AT"]
    assert len(rows) == 1 + len(sink_lines(signed.sink, OTHER))
    assert rows[-1].split()[:4] == [OTHER, str(OTHER_EVENTS + 1),
                                    sink_lines(signed.sink, OTHER)[-1]["root_hash"],
                                    "audit-test"]
    code, output = _cli(signed.database_url, "checkpoints", "list", "--json")
    assert code == 0
    listed = [json.loads(line) for line in output.splitlines()]
    assert [(c["tenant_id"], c["tree_size"], c["note"]) for c in listed] == [
        (line["tenant_id"], line["tree_size"], line["note"])
        for tenant in (TENANT, OTHER) for line in sink_lines(signed.sink, tenant)]

    target = tmp_path / "copy"
    target.mkdir()
    publish = ["checkpoints", "publish", "--database-url", signed.database_url]
    result = CliRunner().invoke(main, publish, env={"AUDIT_CHECKPOINT_DIR": str(target)})
    assert result.exit_code == 0, result.output
    assert f"appended {len(listed)} checkpoints to {target}" in result.output
    for tenant in (TENANT, OTHER):
        name = f"checkpoints-{tenant}.jsonl"
        assert (target / name).read_bytes() == (signed.sink / name).read_bytes()
    again = CliRunner().invoke(main, publish, env={"AUDIT_CHECKPOINT_DIR": str(target)})
    assert again.exit_code == 0 and "appended 0 checkpoints" in again.output


@pytest.mark.parametrize(("environ", "message"), [
    ({}, "checkpoint_dir is not set: nowhere to publish to"),
    ({"AUDIT_CHECKPOINT_DIR": "{tmp}/a-file"}, "is not a writable directory"),
])
def test_publish_without_a_usable_sink_is_a_usage_error(
    signed: Signed, tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    (tmp_path / "a-file").write_text("")
    env: dict[str, str | None] = {"AUDIT_CHECKPOINT_DIR": None}
    env.update({key: value.format(tmp=tmp_path) for key, value in environ.items()})
    result = CliRunner().invoke(
        main, ["checkpoints", "publish", "--database-url", signed.database_url], env=env)
    assert result.exit_code == 2, result.output
    assert result.output.strip().endswith(message)
    assert len(result.output.strip().splitlines()) == 1
