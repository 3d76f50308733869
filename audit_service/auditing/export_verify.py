"""The export line format and its offline verifier: no database, no configuration.

Checks what `verify` checks in PostgreSQL (every hash, every link, a gap-free sequence,
genesis when the export starts at 0) and, when given, the first record's link to a
trusted predecessor hash and the last record against a trusted head hash: only an anchor
held outside the file can reveal that its tail was cut off.

An export line is the record's canonical JSON (`export_line`): the hashed text with the
`"record_hash":"<hex>",` member inserted after the top-level previous_hash. Only that exact
form is accepted, so changing any byte of a line fails.

Most lines are accepted by a byte-level fast path: removing that member and hashing the
rest checks the record without parsing it. Given a trusted hash (linked up to an anchor:
--expect-head or a signed checkpoint), a match proves the rest is exactly the text the
writer hashed, hence canonical JSON, in which the last `,"previous_hash":"` and every key
after it are top level (no object follows them, and a string cannot contain an unescaped
quote), so the link, sequence and tenant read from those bytes are the record's own. A line
the fast path does not accept (the first one, a reformatted or tampered one) gets the full
check, which parses the record, runs `chain.verify_chain` and describes the break.

With checkpoints, a complete export (from genesis) also rebuilds its tenant's Merkle tree,
in the same pass, from the record_hash the chain check accepted on each line, against the
signed checkpoints of the sink (`checkpoint_verify`, which needs no database either). The
fast path alone proves only that a line hashes to the hash it states; the signed roots are
the anchor that makes those hashes, and so the lines, the writer's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, Final

from audit_service.auditing.checkpoint_verify import CheckpointReport, SinkFile, TreeCheck
from audit_service.core.chain import (
    BREAK_HEAD,
    BREAK_MALFORMED,
    GENESIS_PREVIOUS_HASH,
    HASHED_FIELDS,
    ChainBreak,
    VerificationResult,
    verify_chain,
)
from audit_service.core.errors import ConfigurationError
from audit_service.core.signed_note import VerifierKey

STDIN: Final = "-"
READ_BUFFER_BYTES: Final = 1 << 20

_RECORD_KEYS: Final = frozenset((*HASHED_FIELDS, "record_hash"))
_PREVIOUS: Final = b',"previous_hash":"'
_RECORD_HASH: Final = b'","record_hash":"'
_HEX_LENGTH: Final = 64
_EXPECTED_SHAPE: Final = "a JSON object with exactly the hashed fields and record_hash"

_encode_line = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), check_circular=False
).encode
"""json.dumps(record, sort_keys=True, separators=(",", ":")); records come from JSON and
cannot be circular, so the costly circularity check is skipped."""


def export_line(record: Mapping[str, Any]) -> str:
    """One export line: the hashed fields plus record_hash in canonical JSON, newline."""
    return _encode_line(record) + "\n"


class _Malformed(ValueError):
    """A line that is not a record at all (not UTF-8, not JSON, wrong keys)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        raise _Malformed("duplicate key in a JSON object")
    return record


def _reject_constant(name: str) -> Any:
    raise _Malformed(f"{name} is not JSON")


def _parse(line: bytes) -> dict[str, Any]:
    """The record on one line, strictly: one object, no duplicate keys, no extra fields."""
    try:
        record = json.loads(
            line.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_reject_constant
        )
    except UnicodeDecodeError as exc:
        raise _Malformed(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise _Malformed(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise _Malformed(f"a JSON {type(record).__name__}")
    unexpected = sorted(set(record) - _RECORD_KEYS)
    if unexpected:
        raise _Malformed(f"unexpected fields {unexpected}")
    return record


def _accept_fast(
    line: bytes, previous_hash: bytes, sequence_token: bytes, tenant_token: bytes
) -> bytes | None:
    """The line's record_hash if it is the canonical export of the expected next record."""
    start = line.rfind(_PREVIOUS) + len(_PREVIOUS)
    previous_end = start + _HEX_LENGTH
    hash_start = previous_end + len(_RECORD_HASH)
    hash_end = hash_start + _HEX_LENGTH
    if (
        start < len(_PREVIOUS)
        or line[start:previous_end] != previous_hash
        or line[previous_end:hash_start] != _RECORD_HASH
        or line[hash_end:hash_end + 2] != b'",'
        or line.find(sequence_token, hash_end) < 0
        or line.find(tenant_token, hash_end) < 0
    ):
        return None
    end = len(line) - 1 if line.endswith(b"\n") else len(line)
    digest = hashlib.sha256(line[:previous_end + 2])
    digest.update(line[hash_end + 2:end])
    record_hash = line[hash_start:hash_end]
    return record_hash if digest.hexdigest().encode() == record_hash else None


def _sequence_token(sequence: int) -> bytes:
    return b',"sequence_number":%d,"severity":' % sequence


def _check_slowly(
    line: bytes, tenant_id: str | None, sequence: int | None, previous_hash: str | None
) -> dict[str, Any] | ChainBreak:
    """Full check of one line (position 1 in the break); tenant and sequence None mean
    "take them from the record" (the first line)."""
    try:
        record = _parse(line)
    except _Malformed as exc:
        return ChainBreak(tenant_id or "", None, BREAK_MALFORMED, _EXPECTED_SHAPE, str(exc), 1)
    tenant = tenant_id if tenant_id is not None else record.get("tenant_id")
    start = sequence if sequence is not None else record.get("sequence_number")
    if not isinstance(tenant, str) or not isinstance(start, int) or start < 0:
        return ChainBreak("", None, BREAK_MALFORMED, _EXPECTED_SHAPE,
                          "no string tenant_id and sequence_number >= 0", 1)
    result = verify_chain(tenant, [record], start_sequence=start,
                          expected_previous_hash=previous_hash)
    if result.first_break is not None:
        return result.first_break
    if line.removesuffix(b"\n") != export_line(record).encode()[:-1]:
        return ChainBreak(tenant, start, BREAK_MALFORMED, "the canonical export line",
                          "the record in another form (reformatted or edited)", 1)
    return record


def verify_export_lines(
    lines: Iterable[bytes], *, expect_previous: str | None = None,
    expect_head: str | None = None, on_record: Callable[[str], None] | None = None,
) -> VerificationResult:
    """Verify one tenant's export, line by line, in constant memory; breaks name the line.

    `expect_previous`: the record_hash the first record must link to (for an export that
    starts after genesis). `expect_head`: the record_hash the last record must have.
    `on_record`: called with each accepted record's record_hash, the very hash the next
    link was checked against (the checkpoints' tree must be built from these, never from
    another reading of the line: only they are bound to the line's content).
    """
    tenant: str | None = None
    first = last = -1
    last_hash = b""
    sequence_token = tenant_token = b""
    count = 0
    for count, line in enumerate(lines, start=1):
        if tenant is not None:
            accepted = _accept_fast(line, last_hash, sequence_token, tenant_token)
            if accepted is not None:
                last, last_hash = last + 1, accepted
                sequence_token = _sequence_token(last + 1)
                if on_record is not None:
                    on_record(accepted.decode())
                continue
            checked = _check_slowly(line, tenant, last + 1, last_hash.decode())
        else:
            checked = _check_slowly(line, None, None, expect_previous)
        if isinstance(checked, ChainBreak):
            return _result(tenant or "", count - 1, first, last, last_hash,
                           dataclasses.replace(checked, position=count))
        if tenant is None:
            tenant, first = checked["tenant_id"], checked["sequence_number"]
            tenant_token = b',"tenant_id":%s,"timestamp":' % json.dumps(tenant).encode()
        last, last_hash = checked["sequence_number"], checked["record_hash"].encode()
        sequence_token = _sequence_token(last + 1)
        if on_record is not None:
            on_record(checked["record_hash"])
    if tenant is None:
        return _result("", 0, first, last, last_hash, ChainBreak(
            "", None, BREAK_MALFORMED, "at least one record", "an empty file", 1))
    head_break = None
    if expect_head is not None and last_hash.decode() != expect_head:
        head_break = ChainBreak(
            tenant, None, BREAK_HEAD, f"last record_hash {expect_head}",
            f"last record {last} (line {count}) with record_hash {last_hash.decode()}",
            count + 1,
        )
    return _result(tenant, count, first, last, last_hash, head_break)


def _result(
    tenant: str, checked: int, first: int, last: int, last_hash: bytes,
    chain_break: ChainBreak | None,
) -> VerificationResult:
    if not checked:
        return VerificationResult(tenant, 0, None, None, None, chain_break)
    return VerificationResult(tenant, checked, first, last, last_hash.decode(), chain_break)


@contextmanager
def _opened(path: str) -> Iterator[BinaryIO]:
    if path == STDIN:
        yield sys.stdin.buffer
        return
    try:
        handle = open(path, "rb", buffering=READ_BUFFER_BYTES)  # noqa: SIM115
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        yield handle


def verify_export_file(
    path: str, *, expect_previous: str | None = None, expect_head: str | None = None
) -> VerificationResult:
    """Verify the export at `path` ("-" for stdin); unreadable files are usage errors."""
    with _opened(path) as handle:
        try:
            return verify_export_lines(
                handle, expect_previous=expect_previous, expect_head=expect_head
            )
        except OSError as exc:
            raise ConfigurationError(f"error reading {path}: {exc.strerror}") from exc


def verify_export_with_checkpoints(
    path: str, sinks: Mapping[str, SinkFile], verifiers: Sequence[VerifierKey], *,
    expect_head: str | None = None,
) -> tuple[VerificationResult, CheckpointReport | None]:
    """Verify a complete export (its first record must be genesis) and, in the same pass,
    its tenant's checkpoints; the export's last record is the head they must not pass.

    The report is None when the first line names no tenant (the chain result says why).
    """
    with _opened(path) as handle:
        try:
            first = handle.readline()
            tenant = _tenant_of(first)
            lines: Iterator[bytes] = itertools.chain([first] if first else [], handle)
            tree = None if tenant is None else TreeCheck(tenant, sinks.get(tenant), verifiers)
            result = verify_export_lines(
                lines, expect_previous=GENESIS_PREVIOUS_HASH, expect_head=expect_head,
                on_record=None if tree is None else tree.add)
            if tree is None:
                return result, None
            broken = result.first_break
            if broken is not None and broken.kind != BREAK_HEAD:
                # Nothing past the last accepted record is bound to a signed hash.
                tree.stop(f"the chain breaks at record {tree.size} (line {broken.position}): "
                          "checkpoints beyond it are not compared")
            return result, tree.finish(tree.size)
        except OSError as exc:
            raise ConfigurationError(f"error reading {path}: {exc.strerror}") from exc


def _tenant_of(line: bytes) -> str | None:
    try:
        tenant = _parse(line).get("tenant_id")
    except _Malformed:
        return None
    return tenant if isinstance(tenant, str) else None


def break_summary(chain_break: ChainBreak) -> dict[str, Any]:
    """A break as JSON (for `--json` and the verification log), evidence included."""
    return {**dataclasses.asdict(chain_break), "description": chain_break.describe()}
