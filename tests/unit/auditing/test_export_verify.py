"""Offline verification of an export: every tampering is caught and names its line.

The chain under test is the vector chain (tests/vectors/chain.jsonl), whose lines carry
every awkward rendering; `verify --file` runs with no database and no configuration.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit_service.auditing.export_verify import export_line, verify_export_lines
from audit_service.cli import main
from audit_service.core.chain import (
    BREAK_GAP,
    BREAK_HASH_MISMATCH,
    BREAK_HEAD,
    BREAK_LINK,
    BREAK_MALFORMED,
    BREAK_TENANT,
    GENESIS_PREVIOUS_HASH,
    ChainHead,
    VerificationResult,
    advance,
    chain_event,
    compute_record_hash,
    genesis_record,
    parse_timestamp,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "chain.jsonl"
LINES = VECTORS.read_bytes().splitlines(keepends=True)
HEAD = json.loads(LINES[-1])["record_hash"]


def _verify(lines: list[bytes], **anchors: str) -> VerificationResult:
    return verify_export_lines(lines, **anchors)


def _broken_at(lines: list[bytes], **anchors: str) -> int:
    result = _verify(lines, **anchors)
    assert result.first_break is not None, "tampering went unnoticed"
    return result.first_break.position


def test_an_intact_export_verifies_anchored_at_both_ends() -> None:
    result = _verify(LINES, expect_previous=GENESIS_PREVIOUS_HASH, expect_head=HEAD)
    assert result.valid
    assert (result.tenant_id, result.records_checked, result.last_hash) == (
        "tenant-vectors", 9, HEAD)


@pytest.mark.parametrize("line_number", [1, 5, 9])
@pytest.mark.parametrize("mask", [0x01, 0x20, 0x80])
def test_flipping_any_byte_of_a_line_is_caught_at_that_line(line_number: int, mask: int) -> None:
    original = LINES[line_number - 1]
    for index in range(len(original)):
        flipped = bytearray(original)
        flipped[index] ^= mask
        lines = [*LINES[:line_number - 1], bytes(flipped), *LINES[line_number:]]
        position = _broken_at(lines, expect_previous=GENESIS_PREVIOUS_HASH, expect_head=HEAD)
        assert position == line_number, (index, chr(original[index]))


@pytest.mark.parametrize("dropped", range(2, 10))
def test_dropping_a_line_is_caught(dropped: int) -> None:
    lines = LINES[:dropped - 1] + LINES[dropped:]
    result = _verify(lines, expect_head=HEAD)
    assert result.first_break is not None
    if dropped == len(LINES):  # the tail: only the head anchor can tell
        assert result.first_break.kind == BREAK_HEAD
        assert "last record 7 (line 8)" in result.first_break.found
        assert result.valid is False and _verify(lines).valid
    else:
        assert (result.first_break.kind, result.first_break.position) == (BREAK_GAP, dropped)
        assert f"sequence {dropped - 1}" in result.first_break.expected


def test_dropping_genesis_needs_the_start_anchor() -> None:
    lines = LINES[1:]
    assert _verify(lines).first_sequence == 1  # a partial export is a legitimate shape
    result = _verify(lines, expect_previous=GENESIS_PREVIOUS_HASH)
    assert result.first_break is not None
    assert (result.first_break.kind, result.first_break.position) == (BREAK_LINK, 1)


def test_swapping_two_lines_is_caught_at_the_first() -> None:
    for first in range(1, len(LINES)):
        for second in range(first + 1, len(LINES) + 1):
            lines = list(LINES)
            lines[first - 1], lines[second - 1] = lines[second - 1], lines[first - 1]
            assert _broken_at(lines, expect_previous=GENESIS_PREVIOUS_HASH) == first


def test_a_cut_off_tail_is_caught() -> None:
    last = len(LINES)
    for cut in range(2, len(LINES[-1])):
        lines = [*LINES[:-1], LINES[-1][:-cut]]
        assert _broken_at(lines) == last
    assert _verify([*LINES[:-1], LINES[-1][:-1]]).valid  # only the newline: nothing lost
    result = _verify(LINES[:-3], expect_head=HEAD)
    assert result.first_break is not None and result.first_break.kind == BREAK_HEAD
    assert HEAD in result.first_break.expected


def test_a_partial_export_links_to_the_expected_predecessor() -> None:
    predecessor = json.loads(LINES[2])["record_hash"]
    assert _verify(LINES[3:], expect_previous=predecessor, expect_head=HEAD).valid
    result = _verify(LINES[3:], expect_previous=HEAD)
    assert result.first_break is not None
    assert (result.first_break.kind, result.first_break.position) == (BREAK_LINK, 1)


@pytest.mark.parametrize(("line", "found"), [
    (json.dumps(json.loads(LINES[3]), sort_keys=True).encode() + b"\n", "another form"),
    (LINES[3].replace(b'"actor_id"', b'"extra":1,"actor_id"'), "unexpected fields ['extra']"),
    (LINES[3].replace(b'"actor_id":', b'"actor_id":"x","actor_id":'), "duplicate key"),
    (LINES[3].replace(b'"f_sum":0.30000000000000004', b'"f_sum":NaN'), "NaN is not JSON"),
    (LINES[3][:40] + b"\xff" + LINES[3][41:], "not UTF-8"),
    (b"\n", "not JSON"),
    (b"[1, 2]\n", "a JSON list"),
    (LINES[3].replace(b'"severity":"info",', b""), "missing ['severity']"),
])
def test_a_line_that_is_not_a_canonical_record_is_malformed(line: bytes, found: str) -> None:
    result = _verify([*LINES[:3], line, *LINES[4:]])
    assert result.first_break is not None
    assert result.first_break.kind == BREAK_MALFORMED
    assert result.first_break.position == 4
    assert found in result.first_break.found
    assert result.records_checked == 3


def test_a_record_of_another_tenant_is_caught() -> None:
    other = json.loads(LINES[1])
    other["tenant_id"] = "tenant-other"
    created = parse_timestamp(json.loads(LINES[0])["timestamp"])
    head = advance(ChainHead.empty("tenant-other"), genesis_record("tenant-other", created))
    forged = chain_event(head, other, created)
    forged["previous_hash"] = json.loads(LINES[0])["record_hash"]  # linked, hashed, but...
    forged["record_hash"] = compute_record_hash(forged)
    result = _verify([LINES[0], export_line(forged).encode()])
    assert result.first_break is not None
    assert (result.first_break.kind, result.first_break.position) == (BREAK_TENANT, 2)


def test_a_recomputed_hash_still_breaks_the_link() -> None:
    record = json.loads(LINES[4])
    record["actor_id"] = "mallory"
    record["record_hash"] = compute_record_hash(record)
    result = _verify([*LINES[:4], export_line(record).encode(), *LINES[5:]])
    assert result.first_break is not None
    assert (result.first_break.kind, result.first_break.position) == (BREAK_LINK, 6)
    edited = _verify([*LINES[:4], LINES[4].replace(b"triage-agent", b"mallory-agen")])
    assert edited.first_break is not None
    assert edited.first_break.kind == BREAK_HASH_MISMATCH


def test_an_empty_file_proves_nothing() -> None:
    result = _verify([])
    assert result.first_break is not None and "empty file" in result.first_break.found


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["verify", *args], env=env)
    return result.exit_code, result.output


def test_verify_file_needs_no_configuration_and_no_database(tmp_path: Path) -> None:
    env = {"AUDIT_CONFIG": str(tmp_path / "missing.ini"), "AUDIT_DATABASE_URL": "mysql://x"}
    code, output = _cli("--file", str(VECTORS), "--expect-head", HEAD, env=env)
    assert code == 0, output
    assert f"OK, tenant tenant-vectors, 9 records, sequences 0..8, last record_hash {HEAD}" in (
        output)
    assert "verify: OK, 1 file, 9 records intact" in output


def test_verify_file_names_the_line_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"".join([*LINES[:5], LINES[6], LINES[5], *LINES[7:]]))
    code, output = _cli("--file", str(path))
    assert code == 1
    assert "BROKEN at line 6: tenant 'tenant-vectors' sequence 6 (record #6): sequence gap: " \
           "expected sequence 5, found sequence 6" in output
    code, output = _cli("--file", str(path), "--json")
    report = json.loads(output[:output.rindex("}") + 1])
    assert report["ok"] is False
    assert report["files"][0]["break"]["position"] == 6


@pytest.mark.parametrize("args", [
    ["--file", "/nonexistent/export.jsonl"],
    ["--file", str(VECTORS), "--expect-head", "ABC"],
    ["--file", str(VECTORS), "--tenant", "tenant-vectors"],
    ["--file", str(VECTORS), "--file", str(VECTORS), "--expect-head", HEAD],
    ["--expect-head", HEAD],
])
def test_verify_file_usage_errors_exit_2(args: list[str]) -> None:
    code, output = _cli(*args)
    assert code == 2, output


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    return set(done.stdout.split())


def test_the_verifiers_never_import_the_write_path() -> None:
    loaded = _imported_after("import audit_service.auditing.verification, "
                             "audit_service.auditing.export, audit_service.cli")
    assert not loaded & {"audit_service.storage.store", "audit_service.ingest.batch",
                         "audit_service.ingest.daemon"}
    offline = _imported_after("import audit_service.auditing.export_verify")
    assert not {name for name in offline if name.split(".")[0] in {"sqlalchemy", "kafka"}}
