"""`audit-service verify-proof`: offline (no configuration, no database), exit 0 for a
valid proof, 1 with the reason for an invalid one, 2 with one line for a usage error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from proofs import SIGNER, STRANGER, consistency_file, encoded, inclusion_file, note

from audit_service.cli import main

NO_CONFIGURATION = {"AUDIT_CONFIG": "/nonexistent/audit.ini", "AUDIT_DATABASE_URL": "mysql://x"}
"""Any command that read the settings would fail on these."""


@pytest.fixture
def public_key(tmp_path: Path) -> Path:
    path = tmp_path / "audit-proofs.pub"
    path.write_text(SIGNER.verifier().to_text() + "\n")
    return path


def _write(tmp_path: Path, data: bytes, name: str = "proof.json") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _cli(*args: str | Path, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, ["verify-proof", *map(str, args)], env=NO_CONFIGURATION,
                              input=stdin)


def test_a_valid_inclusion_proof_exits_0(tmp_path: Path, public_key: Path) -> None:
    proof = inclusion_file(17, 40)
    result = _cli(_write(tmp_path, encoded(proof)), "--public-key", public_key)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "valid: inclusion of tenant 'tenant-proofs' sequence 17 in tree size 40: record_hash "
        f"{proof['record']['record_hash']} is leaf 17 of the signed root ")
    assert result.stderr == ""


def test_a_valid_consistency_proof_from_stdin_exits_0(public_key: Path) -> None:
    result = _cli("-", "--public-key", public_key, stdin=encoded(consistency_file(33, 40)))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "valid: consistency of tenant 'tenant-proofs' tree size 33 -> 40: the signed root ")


def test_every_key_given_counts(tmp_path: Path, public_key: Path) -> None:
    other = tmp_path / "other.pub"
    other.write_text(STRANGER.verifier().to_text() + "\n")
    proof = consistency_file(8, 20)
    proof["old_checkpoint"] = note(8, signer=STRANGER)
    path = _write(tmp_path, encoded(proof))
    assert _cli(path, "--public-key", public_key).exit_code == 1
    both = _cli(path, "--public-key", public_key, "--public-key", other)
    assert both.exit_code == 0, both.output


def test_a_tampered_record_exits_1_with_the_reason(tmp_path: Path, public_key: Path) -> None:
    proof = inclusion_file(3, 8)
    proof["record"]["actor_id"] = "mallory"
    result = _cli(_write(tmp_path, encoded(proof)), "--public-key", public_key)
    assert result.exit_code == 1
    assert result.stdout.startswith(
        "invalid: inclusion of tenant 'tenant-proofs' sequence 3 in tree size 8: the record "
        "does not check: ")
    assert "hash mismatch" in result.stdout and result.stdout.count("\n") == 1


def test_a_wrongly_signed_proof_exits_1(tmp_path: Path, public_key: Path) -> None:
    proof = consistency_file(3, 8)
    proof["new_checkpoint"] = note(8, signer=STRANGER)
    result = _cli(_write(tmp_path, encoded(proof)), "--public-key", public_key)
    assert result.exit_code == 1
    assert result.stdout == ("invalid: consistency of tenant 'tenant-proofs' tree size 3 -> 8: "
                             "new_checkpoint: signature not accepted: note has no signature "
                             "from a known key\n")


def test_a_proof_file_missing_a_field_exits_1(tmp_path: Path, public_key: Path) -> None:
    proof = inclusion_file(3, 8)
    del proof["checkpoint"]
    result = _cli(_write(tmp_path, encoded(proof)), "--public-key", public_key)
    assert result.exit_code == 1
    assert result.stdout == "invalid: inclusion proof file: missing fields ['checkpoint']\n"


@pytest.mark.parametrize(("data", "message"), [
    (b'{"tenant_id": "t",', "is not a proof file: not JSON (Expecting property name enclosed "
                            "in double quotes at line 1 column 19)"),
    (json.dumps(["a list"]).encode(), "is not a proof file: a JSON list, not an object"),
])
def test_what_is_not_json_exits_2(tmp_path: Path, public_key: Path, data: bytes,
                                  message: str) -> None:
    path = _write(tmp_path, data)
    result = _cli(path, "--public-key", public_key)
    assert result.exit_code == 2
    assert result.stderr == f"audit-service: error: {path} {message}\n"
    assert result.stdout == ""


def test_usage_errors_exit_2_with_one_line(tmp_path: Path, public_key: Path) -> None:
    proof = _write(tmp_path, encoded(inclusion_file(1, 2)))
    signer_key = tmp_path / "audit-proofs.key"
    signer_key.write_text(SIGNER.to_text() + "\n")
    cases = {
        "cannot read /nonexistent/proof.json: No such file or directory":
            ["/nonexistent/proof.json", "--public-key", public_key],
        "cannot read --public-key /nonexistent/k.pub: No such file or directory":
            [proof, "--public-key", "/nonexistent/k.pub"],
        f"--public-key {signer_key} holds a signer key (a secret): pass the .pub file":
            [proof, "--public-key", signer_key],
    }
    for message, args in cases.items():
        result = _cli(*args)
        assert (result.exit_code, result.stderr) == (2, f"audit-service: error: {message}\n")
    missing_key = _cli(proof)
    assert missing_key.exit_code == 2
    assert "Missing option '--public-key'" in missing_key.stderr
