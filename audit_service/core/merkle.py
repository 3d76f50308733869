"""RFC 9162 Merkle tree: hashes, a compact range, proofs from stored subtrees, verification.

A tenant's records are the leaves, in sequence order; a leaf's data is the 32 raw bytes of
the record's `record_hash` (SPEC section 8). Only PERFECT subtrees (2**level leaves starting
at a multiple of 2**level) are ever stored, as in C2SP tlog-tiles, because they never change
once complete. Everything else a proof needs, the right-edge subtrees of a tree whose size
is not a power of two, is folded here from perfect ones.

Node addressing: (level, index) is the perfect subtree over leaves
[index * 2**level, (index + 1) * 2**level); level 0 is the leaf hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

HASH_SIZE: Final = 32
"""Bytes in every hash here (SHA-256)."""

MAX_TREE_SIZE: Final = 2**64 - 1
"""Leaves in the largest tree: sizes are uint64, as in tlog-checkpoint, so a compact range
holds at most 64 hashes."""

# RFC 9162 domain separation: a leaf hash can never equal an inner node's hash.
LEAF_PREFIX: Final = b"\x00"
NODE_PREFIX: Final = b"\x01"

EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""MTH of the empty tree. The service never checkpoints an empty tree; here for completeness."""


class ProofError(ValueError):
    """A proof that does not prove what it claims; the message says why, with the evidence."""


@dataclass(frozen=True, slots=True)
class NodeId:
    """The perfect subtree over leaves [index * 2**level, (index + 1) * 2**level)."""

    level: int
    index: int


@dataclass(frozen=True, slots=True)
class Node:
    """A perfect subtree and its hash, as reported for storage by `CompactRange.append`."""

    level: int
    index: int
    hash: bytes


NodeReader = Callable[[int, int], bytes]
"""`node(level, index)` returns the stored hash of that perfect subtree."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one leaf (our data: a 32-byte record hash)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an inner node."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class CompactRange:
    """The roots of the perfect subtrees that make up a tree of `size` leaves.

    One hash per set bit of `size`, largest (leftmost) first: all a writer must keep to
    append leaves and compute the root, whatever the tree's size. Mutable: `append`
    changes it in place; `to_bytes` is the snapshot to persist.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> CompactRange:
        """Rebuild from `to_bytes()`; the length must be popcount(size) hashes."""
        _check_size("tree size", size, minimum=0)
        expected = size.bit_count() * HASH_SIZE
        if len(data) != expected:
            raise ValueError(
                f"a compact range of size {size} is {expected} bytes, got {len(data)}"
            )
        compact = cls()
        compact._size = size
        compact._hashes = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
        return compact

    @property
    def size(self) -> int:
        """Leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The subtree roots, largest (leftmost) first."""
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> list[Node]:
        """Add one leaf hash; return every perfect subtree this append completed.

        The first is the leaf itself (level 0), then each parent it completed, lowest
        first: exactly the nodes a tile store must save so that later proofs can read them.
        """
        _check_hash("leaf hash", leaf)
        if self._size == MAX_TREE_SIZE:
            raise ValueError(f"a tree holds at most {MAX_TREE_SIZE} leaves")
        index, level, current = self._size, 0, leaf
        completed = [Node(0, index, current)]
        # Each trailing 1 bit of the old size is a left sibling waiting for this subtree.
        while (index >> level) & 1:
            current = node_hash(self._hashes.pop(), current)
            level += 1
            completed.append(Node(level, index >> level, current))
        self._hashes.append(current)
        self._size += 1
        return completed

    def root(self) -> bytes:
        """RFC 9162 MTH of the whole tree: the subtree roots folded right to left."""
        if not self._hashes:
            return EMPTY_ROOT
        return _fold(self._hashes)

    def to_bytes(self) -> bytes:
        """The subtree roots concatenated (32 bytes each); `size` is stored beside them."""
        return b"".join(self._hashes)


def inclusion_nodes(index: int, size: int) -> list[NodeId]:
    """The perfect subtrees `inclusion_proof` reads: at most 2 * 64, O(log size)."""
    return [node for group in _inclusion_plan(index, size) for node in group]


def inclusion_proof(index: int, size: int, node: NodeReader) -> list[bytes]:
    """RFC 9162 PATH(index, D[0:size]) (section 2.1.3.1), nearest the leaf first.

    Reads exactly `inclusion_nodes(index, size)` through `node`: O(log size) reads, so a
    database caller can fetch them in one query and pass a dict lookup.
    """
    return [_read_folded(group, node) for group in _inclusion_plan(index, size)]


def consistency_nodes(old_size: int, new_size: int) -> list[NodeId]:
    """The perfect subtrees `consistency_proof` reads: at most 2 * 64, O(log new_size)."""
    return [node for group in _consistency_plan(old_size, new_size) for node in group]


def consistency_proof(old_size: int, new_size: int, node: NodeReader) -> list[bytes]:
    """RFC 9162 PROOF(old_size, D[0:new_size]) (section 2.1.4.1).

    Reads exactly `consistency_nodes(old_size, new_size)` through `node`: O(log new_size)
    reads. Empty when the sizes are equal; an empty old tree has no proof (ValueError).
    """
    return [_read_folded(group, node) for group in _consistency_plan(old_size, new_size)]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 section 2.1.3.2: raise ProofError unless `proof` puts `leaf` at `index`.

    A proof commits to `size` only through `root`: callers must take both from the same
    signed checkpoint.
    """
    _check_hash("leaf hash", leaf, ProofError)
    _check_hash("root", root, ProofError)
    _check_proof_hashes(proof)
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError(
                f"inclusion proof for leaf {index} in a tree of size {size} is too long "
                f"({len(proof)} hashes)"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} is too short "
            f"({len(proof)} hashes)"
        )
    if r != root:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} leads to root "
            f"{r.hex()}, not {root.hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 section 2.1.4.2: raise ProofError unless the new tree extends the old one.

    Equal sizes need an empty proof and equal roots. An empty old tree is rejected: RFC
    9162 defines no proof from it, and the service never checkpoints one.
    """
    _check_hash("old root", old_root, ProofError)
    _check_hash("new root", new_root, ProofError)
    _check_proof_hashes(proof)
    sizes = f"tree sizes {old_size} -> {new_size}"
    if old_size < 1:
        raise ProofError(f"{sizes}: no consistency proof starts from an empty tree")
    if old_size > new_size:
        raise ProofError(f"{sizes}: the new tree is smaller than the old one")
    if old_size == new_size:
        if proof:
            raise ProofError(f"{sizes}: equal sizes need an empty proof, got {len(proof)}")
        if old_root != new_root:
            raise ProofError(
                f"{sizes}: equal sizes with different roots {old_root.hex()} and "
                f"{new_root.hex()}"
            )
        return
    if not proof:
        raise ProofError(f"{sizes}: the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a perfect subtree of the new one: its root is the first node.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"{sizes}: the consistency proof is too long ({len(proof)})")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"{sizes}: the consistency proof is too short ({len(proof)})")
    if fr != old_root:
        raise ProofError(f"{sizes}: proof leads to old root {fr.hex()}, not {old_root.hex()}")
    if sr != new_root:
        raise ProofError(f"{sizes}: proof leads to new root {sr.hex()}, not {new_root.hex()}")


def _inclusion_plan(index: int, size: int) -> list[list[NodeId]]:
    _check_size("tree size", size, minimum=1)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    return _path_plan(NodeId(0, index), size)


def _consistency_plan(old_size: int, new_size: int) -> list[list[NodeId]]:
    _check_size("old tree size", old_size, minimum=1)
    _check_size("new tree size", new_size, minimum=old_size)
    if old_size == new_size:
        return []
    # The old tree's last perfect subtree is a node of the new tree too. The proof is that
    # node (unless it is the whole old tree, which the verifier already has as its root),
    # then the path from it up to the new root.
    level = (old_size & -old_size).bit_length() - 1
    last = NodeId(level, (old_size - 1) >> level)
    path = _path_plan(last, new_size)
    return path if last.index == 0 else [[last], *path]


def _path_plan(start: NodeId, size: int) -> list[list[NodeId]]:
    """For each sibling on the way from `start` up to the root of a tree of `size` leaves,
    the perfect subtrees whose fold is that sibling's hash.

    The RFC tree is the perfect binary tree cut off at `size`: a sibling wholly past the
    edge is absent (its parent is just the path node), one that straddles it is the fold
    of its perfect parts. At most one sibling straddles, so this reads O(log size) nodes.
    """
    plan: list[list[NodeId]] = []
    height = (size - 1).bit_length()
    for level in range(start.level, height):
        sibling = (start.index >> (level - start.level)) ^ 1
        first = sibling << level
        if first < size:
            plan.append(_perfect_parts(first, min(first + (1 << level), size)))
    return plan


def _perfect_parts(begin: int, end: int) -> list[NodeId]:
    """The perfect subtrees covering [begin, end), largest (leftmost) first.

    One part per set bit of the length. Only for the ranges RFC 9162 builds subtrees on
    (`begin` a multiple of 2**k, `end - begin` at most 2**k), whose MTH is then the
    right-to-left `_fold` of these parts.
    """
    parts = []
    length = end - begin
    for level in reversed(range(length.bit_length())):
        if (length >> level) & 1:
            parts.append(NodeId(level, begin >> level))
            begin += 1 << level
    return parts


def _read_folded(group: list[NodeId], node: NodeReader) -> bytes:
    hashes = []
    for part in group:
        value = node(part.level, part.index)
        _check_hash(f"stored node ({part.level}, {part.index})", value)
        hashes.append(value)
    return _fold(hashes)


def _fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of adjacent perfect subtrees, largest first: combine from the right."""
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def _check_hash(what: str, value: bytes, error: type[ValueError] = ValueError) -> None:
    if len(value) != HASH_SIZE:
        raise error(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for position, value in enumerate(proof):
        _check_hash(f"proof hash {position}", value, ProofError)


def _check_size(what: str, size: int, *, minimum: int) -> None:
    if not minimum <= size <= MAX_TREE_SIZE:
        raise ValueError(f"{what} must be in [{minimum}, {MAX_TREE_SIZE}], got {size}")
