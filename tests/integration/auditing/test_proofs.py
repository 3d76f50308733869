"""`prove` against real PostgreSQL: a chain written by the batch path, its kept tree nodes
and checkpoints, judged by the test-local RFC 9162 reference (tests/tree_support.py) and
the signed notes by `cryptography` directly."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, text
from support import chain_of, statements_run, verify_note_independently
from tree_support import ORIGIN, Reference, chain_with_checkpoints

from audit_service.auditing.export_verify import export_line
from audit_service.auditing.proofs import prove_consistency, prove_inclusion
from audit_service.cli import main
from audit_service.core.chain import compute_record_hash
from audit_service.core.signed_note import SignerKey, generate_signer

TENANT = "tenant-proofs"
BATCHES = [150, 150, 150, 150]
SIZES = [151, 301, 451, 601]
"""Genesis plus 150 records per batch, each batch signed: across the tile boundaries at
256 and 512 leaves, so proofs read level-8 nodes and fold partial tiles."""
STATEMENTS_PER_PROOF = 3
"""Inclusion: the checkpoint, the record, all tiles; consistency: two checkpoints, all
tiles (none between equal sizes). The same whether a proof needs one tile (size 151) or
several levels' (601)."""
INCLUSION_KEYS = ["tenant_id", "sequence_number", "tree_size", "leaf_index", "record",
                  "inclusion_proof", "checkpoint"]
CONSISTENCY_KEYS = ["tenant_id", "old_size", "new_size", "consistency_proof",
                    "old_checkpoint", "new_checkpoint"]


@pytest.fixture
def signer() -> SignerKey:
    return generate_signer(ORIGIN)


@pytest.fixture
def chained(database_url: str, signer: SignerKey) -> Iterator[Engine]:
    chain_with_checkpoints(database_url, signer, TENANT, BATCHES, refused_in=2)
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def _notes(engine: Engine) -> dict[int, str]:
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT tree_size, note FROM audit_checkpoints WHERE tenant_id = :t"), {"t": TENANT})
        return {size: note for size, note in rows}


def _prove(engine: Engine, *args: str) -> tuple[int, str, str]:
    url = engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(main, ["prove", *args], env={"AUDIT_DATABASE_URL": url})
    return result.exit_code, result.stdout, result.stderr


def _tamper(engine: Engine, table: str, statements: list[tuple[str, dict[str, Any]]]) -> None:
    """Run statements as the superuser with the append-only triggers of `table` off."""
    with engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        for statement, params in statements:
            connection.execute(text(statement), params)
        connection.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))


def test_proofs_match_the_rfc_reference_and_the_signed_roots(
    chained: Engine, signer: SignerKey
) -> None:
    records = chain_of(chained.url.render_as_string(hide_password=False), TENANT)
    assert len(records) == SIZES[-1]  # the refused event is not chained
    reference = Reference([bytes.fromhex(r["record_hash"]) for r in records])
    notes = _notes(chained)
    assert sorted(notes) == SIZES
    for size, note in notes.items():
        text_ = verify_note_independently(note, signer.verifier().to_text())
        assert text_ == f"{ORIGIN}/{TENANT}\n{size}\n{_b64([reference.mth(0, size)])[0]}\n"

    with chained.connect() as connection:
        nodes = connection.execute(text(
            "SELECT level, node_index, hash FROM audit_tree_nodes WHERE tenant_id = :t "
            "ORDER BY level, node_index"), {"t": TENANT}).all()
    assert [(level, index, bytes(value)) for level, index, value in nodes] == [
        (8, 0, reference.mth(0, 256)), (8, 1, reference.mth(256, 512))]

    rng = random.Random(7)
    for size in SIZES:
        edges = {0, 1, 254, 255, 256, 257, 511, 512, size - 2, size - 1}
        for index in sorted({i for i in edges if i < size} | set(rng.sample(range(size), 8))):
            with statements_run(chained) as statements:
                document = prove_inclusion(chained, TENANT, index, size)
            assert len(statements) == STATEMENTS_PER_PROOF, (index, size, statements)
            assert list(document) == INCLUSION_KEYS
            assert document["inclusion_proof"] == _b64(reference.path(index, 0, size))
            assert document["record"] == json.loads(export_line(records[index]))
            assert (document["tenant_id"], document["sequence_number"], document["tree_size"],
                    document["leaf_index"], document["checkpoint"]) == (
                TENANT, index, size, index, notes[size])
        for old in SIZES[: SIZES.index(size) + 1]:
            with statements_run(chained) as statements:
                document = prove_consistency(chained, TENANT, old, size)
            expected = STATEMENTS_PER_PROOF - (old == size)
            assert len(statements) == expected, (old, size, statements)
            assert list(document) == CONSISTENCY_KEYS
            assert document["consistency_proof"] == _b64(reference.proof(old, size))
            assert (document["old_checkpoint"], document["new_checkpoint"]) == (
                notes[old], notes[size])


def test_the_cli_prints_the_documents_and_defaults_to_the_newest_checkpoint(
    chained: Engine, tmp_path: Path
) -> None:
    code, stdout, stderr = _prove(chained, "inclusion", "--tenant", TENANT, "--sequence", "300")
    assert code == 0, stderr
    assert json.loads(stdout) == prove_inclusion(chained, TENANT, 300, SIZES[-1])
    assert stdout.startswith('{\n  "tenant_id": ')  # indent 2
    code, stdout, stderr = _prove(chained, "consistency", "--tenant", TENANT,
                                  "--from-size", "301")
    assert code == 0, stderr
    document = json.loads(stdout)
    assert (document["old_size"], document["new_size"]) == (301, SIZES[-1])

    target = tmp_path / "proof.json"
    args = ["consistency", "--tenant", TENANT, "--from-size", "301", "--output", str(target)]
    assert _prove(chained, *args)[:2] == (0, "")
    assert target.read_text() == stdout
    code, _, stderr = _prove(chained, *args)
    assert code == 2 and "already exists" in stderr, stderr


@pytest.mark.parametrize(("args", "message"), [
    (["inclusion", "--tenant", "nobody", "--sequence", "0"], "tenant 'nobody' has no checkpoint"),
    (["inclusion", "--tenant", TENANT, "--sequence", "0", "--tree-size", "152"],
     "no checkpoint at tree size 152"),
    (["inclusion", "--tenant", TENANT, "--sequence", "151", "--tree-size", "151"],
     "sequence 151 is not in the tree of size 151"),
    (["consistency", "--tenant", TENANT, "--from-size", "451", "--to-size", "301"],
     "--from-size 451 is larger than --to-size 301"),
    (["consistency", "--tenant", TENANT, "--from-size", "300"], "no checkpoint at tree size 300"),
])
def test_usage_errors_are_one_line_and_exit_2(
    database_url: str, signer: SignerKey, args: list[str], message: str
) -> None:
    chain_with_checkpoints(database_url, signer, TENANT, [150, 150, 150])
    engine = create_engine(database_url)
    try:
        code, stdout, stderr = _prove(engine, *args)
    finally:
        engine.dispose()
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and message in stderr, stderr


def test_a_chain_rewritten_after_its_checkpoint_cannot_be_proved(chained: Engine) -> None:
    records = chain_of(chained.url.render_as_string(hide_password=False), TENANT)
    # Rewrite record 100 and rehash every record after it: `verify` alone would pass.
    statements = []
    previous = records[99]["record_hash"]
    for record in records[100:]:
        changed = dict(record, previous_hash=previous)
        if record["sequence_number"] == 100:
            changed["actor_id"] = "mallory"
        previous = changed["record_hash"] = compute_record_hash(changed)
        statements.append((
            "UPDATE audit_records SET actor_id = :actor, previous_hash = :previous, "
            "record_hash = :hash WHERE tenant_id = :t AND sequence_number = :seq",
            {"actor": changed["actor_id"], "previous": changed["previous_hash"],
             "hash": previous, "t": TENANT, "seq": record["sequence_number"]}))
    _tamper(chained, "audit_records", statements)

    for args in (["inclusion", "--tenant", TENANT, "--sequence", "100", "--tree-size", "151"],
                 ["inclusion", "--tenant", TENANT, "--sequence", "5"],
                 ["consistency", "--tenant", TENANT, "--from-size", "151"]):
        code, stdout, stderr = _prove(chained, *args)
        assert code == 1 and stdout == "", args
        assert stderr.count("\n") == 1
        assert "no longer matches the signed checkpoint" in stderr, stderr


def test_a_record_changed_without_rehashing_or_a_changed_node_is_caught(
    chained: Engine
) -> None:
    _tamper(chained, "audit_records", [(
        "UPDATE audit_records SET actor_id = 'mallory' WHERE tenant_id = :t "
        "AND sequence_number = 40", {"t": TENANT})])
    code, stdout, stderr = _prove(chained, "inclusion", "--tenant", TENANT, "--sequence", "40")
    assert (code, stdout) == (1, "")
    assert "sequence 40: the record does not hash to its record_hash" in stderr, stderr

    forged = hashlib.sha256(b"forged").digest()
    _tamper(chained, "audit_tree_nodes", [(
        "UPDATE audit_tree_nodes SET hash = :h WHERE tenant_id = :t AND level = 8 "
        "AND node_index = 0", {"h": forged, "t": TENANT})])
    # A tree below 256 leaves reads no level-8 node: its proofs still hold.
    assert prove_inclusion(chained, TENANT, 100, 151)["tree_size"] == 151
    code, stdout, stderr = _prove(chained, "inclusion", "--tenant", TENANT, "--sequence", "300")
    assert (code, stdout) == (1, "")
    assert "no longer matches the signed checkpoint at tree size 601" in stderr, stderr
    code, _, stderr = _prove(chained, "consistency", "--tenant", TENANT, "--from-size", "301")
    assert code == 1 and "no longer matches" in stderr, stderr


def test_what_prove_prints_verify_proof_accepts_and_only_with_the_signing_key(
    chained: Engine, signer: SignerKey, tmp_path: Path
) -> None:
    # The two halves of issue 13 meet here: the service's own output, checked offline.
    key = tmp_path / "audit.pub"
    key.write_text(signer.verifier().to_text() + "\n")
    other = tmp_path / "other.pub"
    other.write_text(generate_signer(ORIGIN).verifier().to_text() + "\n")
    inclusion, consistency = tmp_path / "inclusion.json", tmp_path / "consistency.json"
    assert _prove(chained, "inclusion", "--tenant", TENANT, "--sequence", "300",
                  "--tree-size", "451", "--output", str(inclusion))[0] == 0
    assert _prove(chained, "consistency", "--tenant", TENANT, "--from-size", "151",
                  "--output", str(consistency))[0] == 0

    def verify(proof: Path, public_key: Path) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["verify-proof", str(proof), "--public-key",
                                           str(public_key)])
        return result.exit_code, result.stdout + result.stderr

    code, output = verify(inclusion, key)
    assert code == 0 and output.startswith(
        f"valid: inclusion of tenant {TENANT!r} sequence 300 in tree size 451"), output
    code, output = verify(consistency, key)
    assert code == 0 and output.startswith(
        f"valid: consistency of tenant {TENANT!r} tree size 151 -> {SIZES[-1]}"), output
    for proof in (inclusion, consistency):
        code, output = verify(proof, other)
        assert code == 1 and output.startswith("invalid: "), output
