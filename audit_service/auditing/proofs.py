"""`prove`: inclusion and consistency proofs of a tenant's tree, against its checkpoints.

A proof is built from tile storage (`core.tiles`: all its tiles in one statement,
whatever the tree's size) and checked before it is handed out: the record must hash to its
`record_hash`, and the proof must lead to the root the checkpoint's note signed. A store
that no longer matches its signed checkpoint (records rewritten after it, a stored node
changed) is an integrity failure with the reason; nothing is emitted then.

The JSON documents are the contract with `verify-proof`; their keys keep this order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from audit_service.core.checkpoint import CheckpointError, parse_checkpoint
from audit_service.core.encoding import b64encode
from audit_service.core.errors import ConfigurationError, IntegrityFailure
from audit_service.core.merkle import (
    ProofError,
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from audit_service.core.record_text import RECORD_HASH, export_line, row_hash
from audit_service.core.tiles import TileError, TileReader
from audit_service.storage.reader import CheckpointRow
from audit_service.storage.tree_reader import TreeReader, tree_reader

_STALE = "the store no longer matches the signed checkpoint"


def prove_inclusion(
    engine: Engine, tenant_id: str, sequence_number: int, tree_size: int | None = None
) -> dict[str, Any]:
    """The inclusion proof of record `sequence_number` in the tree of the checkpoint at
    `tree_size` (None: the newest), self-checked."""
    with tree_reader(engine, tenant_id) as reader:
        checkpoint = _checkpoint(reader, tree_size)
        size = checkpoint.tree_size
        if sequence_number >= size:
            raise ConfigurationError(
                f"tenant {tenant_id!r}: sequence {sequence_number} is not in the tree of "
                f"size {size} (its sequences are 0..{size - 1})")
        root = _signed_root(checkpoint)
        where = f"tenant {tenant_id!r} sequence {sequence_number}"
        row = reader.record(sequence_number)
        if row is None:
            raise IntegrityFailure(f"{where}: the record is missing, yet the checkpoint at "
                                   f"tree size {size} covers it")
        record_hash = row[RECORD_HASH]
        if row_hash(row) != record_hash:
            raise IntegrityFailure(f"{where}: the record does not hash to its record_hash "
                                   f"{record_hash}")
        leaf = leaf_hash(bytes.fromhex(record_hash))
        try:
            tiles = TileReader.fetched(
                size, inclusion_nodes(sequence_number, size), reader.tiles)
            proof = inclusion_proof(sequence_number, size, tiles.node)
            verify_inclusion(leaf, sequence_number, size, proof, root)
        except (ProofError, TileError) as exc:
            raise IntegrityFailure(
                f"{where}: {_STALE} at tree size {size}: {exc}") from None
    return {
        "tenant_id": tenant_id, "sequence_number": sequence_number, "tree_size": size,
        "leaf_index": sequence_number, "record": json.loads(export_line(row)),
        "inclusion_proof": [b64encode(h) for h in proof], "checkpoint": checkpoint.note,
    }


def prove_consistency(
    engine: Engine, tenant_id: str, old_size: int, new_size: int | None = None
) -> dict[str, Any]:
    """The consistency proof from the checkpoint at `old_size` to the one at `new_size`
    (None: the newest), self-checked."""
    with tree_reader(engine, tenant_id) as reader:
        new = _checkpoint(reader, new_size)
        if old_size > new.tree_size:
            newer = ("the newest checkpoint's tree size" if new_size is None
                     else "--to-size")
            raise ConfigurationError(
                f"tenant {tenant_id!r}: --from-size {old_size} is larger than {newer} "
                f"{new.tree_size}")
        old = _checkpoint(reader, old_size)
        old_root, new_root = _signed_root(old), _signed_root(new)
        try:
            tiles = TileReader.fetched(
                new.tree_size, consistency_nodes(old.tree_size, new.tree_size), reader.tiles)
            proof = consistency_proof(old.tree_size, new.tree_size, tiles.node)
            verify_consistency(old.tree_size, new.tree_size, old_root, new_root, proof)
        except (ProofError, TileError) as exc:
            raise IntegrityFailure(
                f"tenant {tenant_id!r}: {_STALE}s at tree sizes {old.tree_size} and "
                f"{new.tree_size}: {exc}") from None
    return {
        "tenant_id": tenant_id, "old_size": old.tree_size, "new_size": new.tree_size,
        "consistency_proof": [b64encode(h) for h in proof], "old_checkpoint": old.note,
        "new_checkpoint": new.note,
    }


def write_proof(document: dict[str, Any], output: str | None) -> str:
    """The document as indented JSON, on stdout (returned) or in a new file `output`."""
    rendered = json.dumps(document, indent=2) + "\n"
    if output is None:
        return rendered
    target = Path(output)
    try:
        with target.open("x", encoding="ascii") as handle:
            handle.write(rendered)
    except FileExistsError:
        raise ConfigurationError(f"{target} already exists; choose another --output") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot write {target}: {exc.strerror}") from None
    return ""


def _checkpoint(reader: TreeReader, tree_size: int | None) -> CheckpointRow:
    checkpoint = reader.checkpoint(tree_size)
    if checkpoint is None:
        if tree_size is None or reader.checkpoint() is None:
            raise ConfigurationError(f"tenant {reader.tenant_id!r} has no checkpoint")
        raise ConfigurationError(
            f"tenant {reader.tenant_id!r} has no checkpoint at tree size {tree_size} "
            "(`audit-service checkpoints list` shows the sizes)")
    return checkpoint


def _signed_root(checkpoint: CheckpointRow) -> bytes:
    """The root the note's text states, after checking that the text is this tenant's
    checkpoint at this size (the signature is the verifier's business: prove has no key)."""
    where = f"tenant {checkpoint.tenant_id!r} checkpoint at tree size {checkpoint.tree_size}"
    text = checkpoint.note[: checkpoint.note.rfind("\n\n") + 1]
    try:
        signed = parse_checkpoint(text)
    except CheckpointError as exc:
        raise IntegrityFailure(f"{where}: its note is not a checkpoint: {exc}") from None
    if signed.size != checkpoint.tree_size or not signed.origin.endswith(
            f"/{checkpoint.tenant_id}"):
        raise IntegrityFailure(
            f"{where}: its note is for {signed.origin!r} at tree size {signed.size}")
    return signed.root
