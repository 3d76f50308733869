"""The checkpoint verifier on its own: sink files written here, records made up here.

The trees are judged by the test-local RFC 9162 root in support, not by core.merkle.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from support import reference_root

from audit_service.auditing.checkpoint_verify import (
    MAX_FAILURES,
    CheckpointReport,
    SinkFile,
    TreeCheck,
    load_verifiers,
    sink_files,
)
from audit_service.core.checkpoint import SignedCheckpoint, format_checkpoint
from audit_service.core.errors import ConfigurationError
from audit_service.core.signed_note import SignerKey, generate_signer, sign_note

TENANT = "t-1"
SIGNER = generate_signer("audit-unit")
HASHES = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(40)]


def _line(size: int, root: bytes | None = None, signer: SignerKey = SIGNER,
          origin: str = f"audit-unit/{TENANT}") -> str:
    if root is None:
        root = reference_root([bytes.fromhex(h) for h in HASHES[:size]])
    note = sign_note(format_checkpoint(origin, size, root), [signer])
    return SignedCheckpoint(TENANT, size, root, note).to_sink_line()


def _sink(tmp_path: Path, *lines: str) -> SinkFile:
    path = tmp_path / f"checkpoints-{TENANT}.jsonl"
    path.write_text("".join(lines))
    return sink_files(path)[TENANT]


def _check(sink: SinkFile | None, records: int, head: int | None = None) -> CheckpointReport:
    tree = TreeCheck(TENANT, sink, [SIGNER.verifier()])
    for record_hash in HASHES[:records]:
        tree.add(record_hash)
    return tree.finish(records if head is None else head)


def _reasons(report: CheckpointReport) -> list[tuple[int | None, str]]:
    return [(f.tree_size, f.reason) for f in report.failures]


def test_matching_checkpoints_verify_and_a_repeated_one_is_fine(tmp_path: Path) -> None:
    report = _check(_sink(tmp_path, _line(1), _line(7), _line(7), _line(32), _line(33)), 40)

    assert report.valid, report.failures
    assert (report.checkpoints, report.verified, report.newest_size) == (4, 4, 33)
    assert report.describe() == "4 checkpoints verified, newest tree size 33"


def test_a_changed_record_hash_fails_every_checkpoint_from_it_on(tmp_path: Path) -> None:
    sink = _sink(tmp_path, _line(5), _line(10), _line(20))
    tree = TreeCheck(TENANT, sink, [SIGNER.verifier()])
    for number, record_hash in enumerate(HASHES[:20]):
        tree.add("ab" * 32 if number == 7 else record_hash)

    report = tree.finish(20)

    assert [size for size, _ in _reasons(report)] == [10, 20]
    assert "the records up to tree size 5 match its checkpoint, so a record in sequences " \
           "5..9 differs" in report.failures[0].reason
    assert report.verified == 1


def test_lines_appended_after_the_run_began_are_not_read(tmp_path: Path) -> None:
    sink = _sink(tmp_path, _line(5))
    with sink.path.open("a") as handle:
        handle.write(_line(30))  # covers records the run's snapshot may not hold

    report = _check(sink, 10)

    assert report.valid and report.newest_size == 5


def test_a_torn_last_line_is_a_failure_naming_the_line(tmp_path: Path) -> None:
    report = _check(_sink(tmp_path, _line(5), _line(9)[:-1]), 10)

    assert [(f.line, f.reason) for f in report.failures] == [
        (2, "malformed line: torn line: no newline at the end")]
    assert report.failures[0].describe() == (
        f"tenant '{TENANT}' checkpoint (checkpoints-{TENANT}.jsonl line 2): malformed line: "
        "torn line: no newline at the end")


def test_an_origin_without_a_prefix_or_of_another_tenant_fails(tmp_path: Path) -> None:
    report = _check(_sink(tmp_path, _line(2, origin=TENANT), _line(3, origin="o/t-2"),
                          _line(4, origin="a/b/t-1")), 10)

    assert [reason.split(" (")[0] for _, reason in _reasons(report)] == [
        f"origin {TENANT!r} is not <origin>/{TENANT}",
        f"origin 'o/t-2' is not <origin>/{TENANT}"]
    assert report.verified == 1  # 'a/b' is a valid origin prefix


def test_a_line_of_another_tenant_in_this_file_fails(tmp_path: Path) -> None:
    line = _line(3).replace(f'"tenant_id":"{TENANT}"', '"tenant_id":"t-2"')

    report = _check(_sink(tmp_path, line), 10)

    assert _reasons(report) == [(3, f"the line says tenant_id 't-2' in the file of {TENANT!r}")]


def test_no_records_at_all_means_all_removed(tmp_path: Path) -> None:
    report = _check(_sink(tmp_path, _line(3)), 0)

    assert _reasons(report) == [(3, "all removed: the tenant has no records in the database")]


def test_without_records_to_compare_only_the_lines_are_checked(tmp_path: Path) -> None:
    report = TreeCheck(TENANT, _sink(tmp_path, _line(3), "x\n"),
                       [SIGNER.verifier()]).finish(None)

    assert _reasons(report) == [(None, "malformed line: not a JSON object")]
    assert (report.checkpoints, report.compared) == (1, False)


def test_a_record_hash_that_is_not_hex_stops_the_tree(tmp_path: Path) -> None:
    tree = TreeCheck(TENANT, _sink(tmp_path, _line(3), _line(9)), [SIGNER.verifier()])
    tree.add(HASHES[0])
    tree.add("not hex")
    tree.add(HASHES[2])

    report = tree.finish(3)

    assert _reasons(report) == [(None, "record 1 has no 64-hex-digit record_hash: "
                                       "checkpoints beyond it are not checked")]


def test_failures_are_capped_and_counted(tmp_path: Path) -> None:
    report = _check(_sink(tmp_path, *["junk\n"] * (MAX_FAILURES + 5)), 3)

    assert len(report.failures) == MAX_FAILURES and report.more_failures == 5


def test_no_sink_file_means_no_checkpoints() -> None:
    report = _check(None, 5)

    assert report.valid and report.describe() == "no checkpoints in the sink (a new tenant?)"


def test_a_sink_directory_lists_only_sink_files(tmp_path: Path) -> None:
    for name in (f"checkpoints-{TENANT}.jsonl", "checkpoints-...jsonl", "notes.txt",
                 "checkpoints-a b.jsonl"):
        (tmp_path / name).write_text(_line(1))
    (tmp_path / "checkpoints-dir.jsonl").mkdir()

    assert sorted(sink_files(tmp_path)) == ["..", TENANT]


@pytest.mark.parametrize(("name", "message"), [
    ("notes.txt", "is not a sink file: its name must be checkpoints-<tenant>.jsonl"),
    ("missing", "no such file or directory"),
])
def test_a_path_that_is_no_sink_is_a_usage_error(tmp_path: Path, name: str,
                                                 message: str) -> None:
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        sink_files(tmp_path / name)


def test_a_directory_without_sink_files_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ConfigurationError,
                       match=re.escape("holds no checkpoints-<tenant>.jsonl file")):
        sink_files(tmp_path)


def test_verifier_key_files(tmp_path: Path) -> None:
    public, secret, junk = tmp_path / "k.pub", tmp_path / "k.key", tmp_path / "junk.pub"
    public.write_text(SIGNER.verifier().to_text() + "\n")
    secret.write_text(SIGNER.to_text() + "\n")
    junk.write_text("nonsense\n")

    assert load_verifiers([str(public)]) == (SIGNER.verifier(),)
    with pytest.raises(ConfigurationError, match="holds a signer key") as raised:
        load_verifiers([str(secret)])
    assert SIGNER.to_text().split("+", 4)[-1] not in str(raised.value)  # the key data
    with pytest.raises(ConfigurationError, match=f"--public-key {junk}: verifier key is not"):
        load_verifiers([str(junk)])
    with pytest.raises(ConfigurationError, match="cannot read --public-key"):
        load_verifiers([os.fspath(tmp_path / "none.pub")])
