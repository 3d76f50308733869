"""A stored record's hashed text and export line, rendered straight from its row.

`verify` and `export` read millions of rows; building each record's dict and letting the
JSON encoder sort it (`chain.canonical_json`) costs more than reading the row. Rows come
instead as tuples in the export line's key order (`ROW_FIELDS`), and each text is filled
into a template of the sorted top-level keys: the top level is never sorted or built as
a dict, only the nested JSONB values go through the canonical encoder. The result is byte
for byte `chain.canonical_json` (and `export_verify.export_line`), which the tests check
against an independent rendering. `verify_rows` checks a chain from its rows the same way,
and hands the first row it does not accept to `chain.verify_chain`, which names the break.

A row holds what the reader selects: every text, uuid and timestamp column as a string
(timestamps already rendered as hashed), `sequence_number` an int, the arrays lists of
strings, and `context`, `decision` and `outcome` as PostgreSQL's text of the JSONB value.
A value of another type raises TypeError (it cannot be rendered here) rather than being
rendered some other way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import json.scanner
from collections.abc import Callable, Iterable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from audit_service.core.chain import (
    GENESIS_AUDIT_ID,
    GENESIS_PREVIOUS_HASH,
    HASHED_FIELDS,
    ChainHead,
    VerificationResult,
    compact_json_encoder,
    head_break,
    verify_chain,
)
from audit_service.core.taxonomy import GENESIS_EVENT_TYPE

ROW_FIELDS: Final = tuple(sorted((*HASHED_FIELDS, "record_hash")))
"""Column order of a record row: the keys of an export line in their (sorted) order."""

RecordRow = Sequence[Any]
"""One record's values in `ROW_FIELDS` order."""

RECORD_HASH: Final = ROW_FIELDS.index("record_hash")
SEQUENCE_NUMBER: Final = ROW_FIELDS.index("sequence_number")
PREVIOUS_HASH: Final = ROW_FIELDS.index("previous_hash")
TENANT_ID: Final = ROW_FIELDS.index("tenant_id")
AUDIT_ID: Final = ROW_FIELDS.index("audit_id")
EVENT_TYPE: Final = ROW_FIELDS.index("event_type")

_JSONB_FIELDS: Final = frozenset({"context", "decision", "outcome"})
_LIST_FIELDS: Final = frozenset({"actor_permissions", "entity_ids"})
_JSONB_INDEXES: Final = tuple(i for i, f in enumerate(ROW_FIELDS) if f in _JSONB_FIELDS)

_encode = compact_json_encoder(sort_keys=True)
_loads = json.loads
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
"""The scanner under `json.loads`, without its per-call wrapper (about a tenth of the
read path's time): PostgreSQL's text of a JSONB value has no surrounding whitespace."""


def _parse(text: str) -> Any:
    """`json.loads(text)`: the scanner's value when it consumed the whole text; anything
    else is left to json.loads (its own result, or its error)."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return _loads(text)
    return value if end == len(text) else _loads(text)


def _jsonb(text: str) -> str:
    return "{}" if text == "{}" else _encode(_parse(text))


def _renderer(field: str) -> Callable[[Any], str]:
    if field in _JSONB_FIELDS:
        return _jsonb
    if field in _LIST_FIELDS:
        return _encode  # any other value than a list of strings renders as JSON does too
    if field == "sequence_number":
        return int.__repr__
    return encode_basestring_ascii


_RENDERERS: Final = tuple(_renderer(field) for field in ROW_FIELDS)
_HEAD_RENDERERS: Final = tuple(enumerate(_RENDERERS))[:RECORD_HASH]
_TAIL_RENDERERS: Final = tuple(enumerate(_RENDERERS))[RECORD_HASH + 1:]
_HEAD: Final = "{" + "".join(f'"{f}":%s,' for f in ROW_FIELDS[:RECORD_HASH])
"""Every member before record_hash, each with its comma: the hashed text's start."""
_TAIL: Final = ",".join(f'"{f}":%s' for f in ROW_FIELDS[RECORD_HASH + 1:]) + "}"


def hashed_parts(row: RecordRow) -> tuple[str, str]:
    """The hashed text split where the export line holds record_hash: head + tail is
    `chain.canonical_json` of the record."""
    head = _HEAD % tuple([render(row[i]) for i, render in _HEAD_RENDERERS])
    tail = _TAIL % tuple([render(row[i]) for i, render in _TAIL_RENDERERS])
    return head, tail


def row_hash(row: RecordRow) -> str:
    """`chain.compute_record_hash` of the record in `row`."""
    head, tail = hashed_parts(row)
    digest = hashlib.sha256(head.encode("utf-8"))
    digest.update(tail.encode("utf-8"))
    return digest.hexdigest()


def export_line(row: RecordRow) -> str:
    """`export_verify.export_line` of the record in `row`: the hashed text with
    `"record_hash":"<hex>",` in its sorted place, then a newline."""
    head, tail = hashed_parts(row)
    return f'{head}"record_hash":{encode_basestring_ascii(row[RECORD_HASH])},{tail}\n'


def record_of(row: RecordRow) -> dict[str, Any]:
    """The record as a dict (the hashed fields plus record_hash), for `chain.verify_chain`."""
    values = list(row)
    for index in _JSONB_INDEXES:
        values[index] = _loads(values[index])
    return dict(zip(ROW_FIELDS, values, strict=True))


def _accepted(row: RecordRow, tenant_id: str, sequence: int, link: str | None) -> bool:
    """Whether `row` passes every check `chain.verify_chain` makes of the record at
    `sequence` linking to `link` (None: no link to check)."""
    if (
        row[TENANT_ID] != tenant_id
        or row[SEQUENCE_NUMBER].__class__ is not int
        or row[SEQUENCE_NUMBER] != sequence
        or (link is not None and row[PREVIOUS_HASH] != link)
    ):
        return False
    if sequence == 0 and (
        row[PREVIOUS_HASH] != GENESIS_PREVIOUS_HASH or row[AUDIT_ID] != GENESIS_AUDIT_ID
        or row[EVENT_TYPE] != GENESIS_EVENT_TYPE
    ):
        return False
    try:
        return bool(row_hash(row) == row[RECORD_HASH])
    except (TypeError, ValueError):  # a value this renderer does not take: the slow path
        return False


def verify_rows(
    tenant_id: str, rows: Iterable[RecordRow], *, start_sequence: int = 0,
    expected_previous_hash: str | None = None, expected_head: ChainHead | None = None,
) -> VerificationResult:
    """`chain.verify_chain` of the records in `rows`, with the same result.

    Rows that pass the same checks (tenant, sequence, link, genesis, hash) are accepted
    without building a record; the first other row and all after it are handed to
    `verify_chain` as records, from the state it would have reached itself, so the break
    and its evidence are exactly its own.
    """
    count = 0
    first_sequence = last_sequence = None
    link = expected_previous_hash
    remaining = iter(rows)
    for row in remaining:
        sequence = start_sequence + count
        if not _accepted(row, tenant_id, sequence, link):
            rest = verify_chain(
                tenant_id, map(record_of, itertools.chain([row], remaining)),
                start_sequence=sequence, expected_previous_hash=link, expected_head=expected_head,
            )
            return _after(rest, count, first_sequence, last_sequence, link)
        if first_sequence is None:
            first_sequence = sequence
        count, last_sequence, link = count + 1, sequence, row[RECORD_HASH]
    last_hash = link if count else None
    return VerificationResult(
        tenant_id, count, first_sequence, last_sequence, last_hash,
        head_break(tenant_id, expected_head, last_sequence, last_hash, count + 1),
    )


def _after(
    rest: VerificationResult, accepted: int, first_sequence: int | None,
    last_sequence: int | None, last_hash: str | None,
) -> VerificationResult:
    """`rest`, the result over what followed `accepted` rows, as the result of them all."""
    chain_break = rest.first_break
    if chain_break is not None:
        chain_break = dataclasses.replace(chain_break, position=chain_break.position + accepted)
    if rest.records_checked:
        first_sequence = first_sequence if accepted else rest.first_sequence
        last_sequence, last_hash = rest.last_sequence, rest.last_hash
    return VerificationResult(
        rest.tenant_id, accepted + rest.records_checked, first_sequence, last_sequence,
        last_hash if accepted or rest.records_checked else None, chain_break,
    )
