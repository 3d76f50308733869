"""Proof files, as `audit-service prove` writes them, parsed strictly and checked offline.

An inclusion proof file claims "this record is leaf N of the tenant's tree whose root a
checkpoint signed at size S"; a consistency proof file claims "the tree signed at size A
is the first A leaves of the tree signed at size B" (SPEC section 8). Each carries all
its evidence except the verifier keys, which the auditor must hold from elsewhere: a
checkpoint is worth only the key that signed it.

Parsing is strict (exact fields, exact types, canonical base64, 32-byte hashes, no
duplicate keys) so that a file means one thing to every reader. Nothing here reads files
or settings: `verify-proof` runs with no database and no configuration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from audit_service.core.chain import HASHED_FIELDS, verify_chain
from audit_service.core.checkpoint import (
    TENANT_ID,
    Checkpoint,
    CheckpointError,
    open_tenant_checkpoint,
)
from audit_service.core.encoding import b64decode, b64encode
from audit_service.core.merkle import (
    HASH_SIZE,
    MAX_TREE_SIZE,
    ProofError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from audit_service.core.signed_note import VerifierKey

INCLUSION_FIELDS: Final = frozenset((
    "tenant_id", "sequence_number", "tree_size", "leaf_index", "record", "inclusion_proof",
    "checkpoint"))
CONSISTENCY_FIELDS: Final = frozenset((
    "tenant_id", "old_size", "new_size", "consistency_proof", "old_checkpoint",
    "new_checkpoint"))
RECORD_FIELDS: Final = frozenset((*HASHED_FIELDS, "record_hash"))
"""A record as one `export` line: the hashed fields and record_hash, nothing else."""

_SHOWN_CHARS: Final = 40
"""Characters of an offending value quoted in a reason (a file may hold anything)."""


class ProofFileError(ValueError):
    """The input is not a JSON object at all, so nothing in it was checked."""


@dataclass(frozen=True, slots=True)
class InclusionProofFile:
    """A record, its RFC 9162 inclusion proof, and the signed checkpoint it leads to."""

    tenant_id: str
    sequence_number: int
    tree_size: int
    leaf_index: int
    record: dict[str, Any]
    proof: tuple[bytes, ...]
    checkpoint: str

    def verify(self, verifiers: Sequence[VerifierKey]) -> str:
        """What the file proves, in one line; ProofError with the evidence otherwise."""
        subject = (f"inclusion of tenant {self.tenant_id!r} sequence {self.sequence_number} "
                   f"in tree size {self.tree_size}")
        try:
            if self.sequence_number != self.leaf_index:
                raise ProofError(f"leaf_index {self.leaf_index} is not the sequence_number: "
                                 "record N is leaf N of its tenant's tree")
            signed = _signed("checkpoint", self.checkpoint, self.tenant_id, self.tree_size,
                             "tree_size", verifiers)
            record_hash = _checked_record_hash(self.tenant_id, self.sequence_number,
                                               self.record)
            verify_inclusion(leaf_hash(bytes.fromhex(record_hash)), self.leaf_index,
                             self.tree_size, self.proof, signed.root)
        except ProofError as exc:
            raise ProofError(f"{subject}: {exc}") from None
        return (f"{subject}: record_hash {record_hash} is leaf {self.leaf_index} of the "
                f"signed root {b64encode(signed.root)}")


@dataclass(frozen=True, slots=True)
class ConsistencyProofFile:
    """Two signed checkpoints of one tenant and the RFC 9162 proof that one extends the
    other."""

    tenant_id: str
    old_size: int
    new_size: int
    proof: tuple[bytes, ...]
    old_checkpoint: str
    new_checkpoint: str

    def verify(self, verifiers: Sequence[VerifierKey]) -> str:
        """What the file proves, in one line; ProofError with the evidence otherwise."""
        subject = (f"consistency of tenant {self.tenant_id!r} tree size {self.old_size} -> "
                   f"{self.new_size}")
        try:
            old = _signed("old_checkpoint", self.old_checkpoint, self.tenant_id,
                          self.old_size, "old_size", verifiers)
            new = _signed("new_checkpoint", self.new_checkpoint, self.tenant_id,
                          self.new_size, "new_size", verifiers)
            verify_consistency(self.old_size, self.new_size, old.root, new.root, self.proof)
        except ProofError as exc:
            raise ProofError(f"{subject}: {exc}") from None
        return (f"{subject}: the signed root {b64encode(new.root)} extends the signed root "
                f"{b64encode(old.root)}, nothing before leaf {self.old_size} rewritten")


ProofFile = InclusionProofFile | ConsistencyProofFile


def parse_proof_file(data: bytes) -> ProofFile:
    """The proof file in `data`.

    ProofFileError when it is not a JSON object (not UTF-8, not JSON); ProofError when it
    is one but not a proof file of either kind, with the field at fault.
    """
    try:
        fields = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys,
                            parse_constant=_no_constant)
    except ProofError:
        raise
    except UnicodeDecodeError as exc:
        raise ProofFileError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ProofFileError(
            f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except ValueError:  # an integer of more than 4300 digits (sys.get_int_max_str_digits)
        raise ProofFileError("not JSON this verifier reads: an integer far too long") from None
    except RecursionError:
        raise ProofFileError("not JSON this verifier reads: nested too deeply") from None
    if not isinstance(fields, dict):
        raise ProofFileError(f"a JSON {type(fields).__name__}, not an object")
    kinds = {"inclusion_proof", "consistency_proof"} & fields.keys()
    if len(kinds) != 1:
        raise ProofError("not a proof file: it must hold exactly one of inclusion_proof "
                         "and consistency_proof")
    if kinds == {"inclusion_proof"}:
        _exact_fields("inclusion proof file", fields, INCLUSION_FIELDS)
        return InclusionProofFile(
            _tenant_id(fields["tenant_id"]),
            _integer("sequence_number", fields["sequence_number"], minimum=0),
            _integer("tree_size", fields["tree_size"], minimum=1),
            _integer("leaf_index", fields["leaf_index"], minimum=0),
            _record(fields["record"]),
            _hashes("inclusion_proof", fields["inclusion_proof"]),
            _note("checkpoint", fields["checkpoint"]))
    _exact_fields("consistency proof file", fields, CONSISTENCY_FIELDS)
    return ConsistencyProofFile(
        _tenant_id(fields["tenant_id"]),
        _integer("old_size", fields["old_size"], minimum=1),
        _integer("new_size", fields["new_size"], minimum=1),
        _hashes("consistency_proof", fields["consistency_proof"]),
        _note("old_checkpoint", fields["old_checkpoint"]),
        _note("new_checkpoint", fields["new_checkpoint"]))


def _signed(field: str, note: str, tenant_id: str, size: int, size_field: str,
            verifiers: Sequence[VerifierKey]) -> Checkpoint:
    """The checkpoint in `note`, signed by a known key for `tenant_id` at `size`."""
    try:
        checkpoint = open_tenant_checkpoint(note, tenant_id, verifiers)
    except CheckpointError as exc:
        raise ProofError(f"{field}: {exc}") from None
    if checkpoint.size != size:
        raise ProofError(f"{field} is signed for tree size {checkpoint.size}, the file's "
                         f"{size_field} is {size}")
    return checkpoint


def _checked_record_hash(tenant_id: str, sequence: int, record: dict[str, Any]) -> str:
    """The record's record_hash, once its fields hash to it (as `verify --file` checks a
    line): a record edited after it was proven fails here, whatever the proof says."""
    result = verify_chain(tenant_id, [record], start_sequence=sequence)
    if result.first_break is not None:
        raise ProofError(f"the record does not check: {result.first_break.describe()}")
    record_hash: str = record["record_hash"]
    return record_hash


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in pairs:
        if key in fields:
            raise ProofError(f"duplicate key {_shown(key)} in a JSON object")
        fields[key] = value
    return fields


def _no_constant(name: str) -> Any:
    raise ProofError(f"{name} is not JSON")


def _exact_fields(what: str, fields: dict[str, Any], expected: frozenset[str]) -> None:
    missing, unexpected = sorted(expected - fields.keys()), sorted(fields.keys() - expected)
    if missing:
        raise ProofError(f"{what}: missing fields {missing}")
    if unexpected:
        raise ProofError(f"{what}: unexpected fields {[k[:_SHOWN_CHARS] for k in unexpected]}")


def _tenant_id(value: object) -> str:
    if not isinstance(value, str) or not TENANT_ID.fullmatch(value):
        raise ProofError(f"tenant_id is not a tenant id: {_shown(value)}")
    return value


def _integer(field: str, value: object, *, minimum: int) -> int:
    if type(value) is not int or not minimum <= value <= MAX_TREE_SIZE:
        raise ProofError(
            f"{field} is not an integer in [{minimum}, 2**64 - 1]: {_shown(value)}")
    return value


def _hashes(field: str, value: object) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise ProofError(f"{field} is not a list of base64 hashes: {_shown(value)}")
    hashes = []
    for position, item in enumerate(value):
        try:
            decoded = b64decode(item) if isinstance(item, str) else b""
        except ValueError as exc:
            raise ProofError(f"{field}[{position}] is {exc}: {_shown(item)}") from None
        if len(decoded) != HASH_SIZE:
            raise ProofError(f"{field}[{position}] is not the base64 of a {HASH_SIZE}-byte "
                             f"hash: {_shown(item)}")
        hashes.append(decoded)
    return tuple(hashes)


def _note(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ProofError(f"{field} is not a signed note (a string): {_shown(value)}")
    return value


def _record(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProofError(f"record is not a JSON object: {_shown(value)}")
    _exact_fields("record", value, RECORD_FIELDS)
    return value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
