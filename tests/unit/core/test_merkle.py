"""The Merkle module against a reference written here from RFC 9162's recursive definitions.

`audit_service.core.merkle` computes proofs bottom-up from node addresses; the reference
below is the RFC's top-down recursion (MTH, PATH, PROOF/SUBPROOF, k = the largest power of
two below n), sharing no code with it. Every proof for every tree size up to 70, and for
sizes around powers of two, must match it byte for byte, verify, and fail once tampered.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from functools import cache

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit_service.core.merkle import (
    EMPTY_ROOT,
    MAX_TREE_SIZE,
    CompactRange,
    Node,
    NodeId,
    ProofError,
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

SMALL_SIZES = range(1, 71)
LARGE_SIZES = (127, 128, 129, 1000, 1024, 1025)
MAX_SIZE = max(LARGE_SIZES)

# Leaf data as in the service: 32 raw bytes per record (here, hashes of the leaf number).
LEAF_DATA = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(MAX_SIZE)]


# --- The reference: RFC 9162 section 2.1, over D[lo:hi] of LEAF_DATA ---------------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def ref_mth(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi])."""
    n = hi - lo
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + LEAF_DATA[lo])
    k = _k(n)
    return _sha256(b"\x01" + ref_mth(lo, lo + k) + ref_mth(lo + k, hi))


def ref_path(m: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi]), m relative to lo."""
    n = hi - lo
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, lo, lo + k), ref_mth(lo + k, hi)]
    return [*ref_path(m - k, lo + k, hi), ref_mth(lo, lo + k)]


def ref_subproof(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b)."""
    n = hi - lo
    if m == n:
        return [] if b else [ref_mth(lo, hi)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, lo, lo + k, b), ref_mth(lo + k, hi)]
    return [*ref_subproof(m - k, lo + k, hi, False), ref_mth(lo, lo + k)]


def ref_proof(m: int, n: int) -> list[bytes]:
    """PROOF(m, D[0:n])."""
    return ref_subproof(m, 0, n, True)


# --- A tile store filled by CompactRange.append, as the service will fill one -----------


def _build_store() -> dict[NodeId, bytes]:
    compact = CompactRange()
    store: dict[NodeId, bytes] = {}
    for data in LEAF_DATA:
        for node in compact.append(leaf_hash(data)):
            store[NodeId(node.level, node.index)] = node.hash
    return store


STORE = _build_store()


def reader(size: int, reads: list[NodeId] | None = None) -> Callable[[int, int], bytes]:
    """A node lookup that refuses subtrees not yet complete in a tree of `size` leaves."""

    def node(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size, f"read ({level}, {index}) past size {size}"
        if reads is not None:
            reads.append(NodeId(level, index))
        return STORE[NodeId(level, index)]

    return node


def flipped(proof: list[bytes], position: int) -> list[bytes]:
    changed = bytearray(proof[position])
    changed[0] ^= 0x08
    return [*proof[:position], bytes(changed), *proof[position + 1 :]]


def tampered_proofs(proof: list[bytes], root: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """Every single change to a proof that must break it."""
    for position in range(len(proof)):
        yield f"hash {position} changed", flipped(proof, position)
        yield f"hash {position} missing", proof[:position] + proof[position + 1 :]
        yield f"hash {position} doubled", [*proof[: position + 1], *proof[position:]]
    yield "extra root at the end", [*proof, root]
    yield "extra root at the front", [root, *proof]
    yield "extra empty-tree hash at the end", [*proof, EMPTY_ROOT]


# --- Hashing and known answers ----------------------------------------------------------


def test_hashes_use_the_rfc_9162_domain_prefixes() -> None:
    data = LEAF_DATA[0]
    assert leaf_hash(data) == _sha256(b"\x00" + data)
    assert node_hash(data, data[::-1]) == _sha256(b"\x01" + data + data[::-1])
    assert EMPTY_ROOT.hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert CompactRange().root() == EMPTY_ROOT


# Known answers from transparency-dev/merkle, proof/verify_test.go (the Certificate
# Transparency test tree of eight leaves); its inclusion vectors number leaves from 1.
KAT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]
KAT_ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
KAT_INCLUSION = [  # (leaf number from 1, tree size, proof)
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
KAT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


def _kat_store() -> tuple[list[bytes], dict[NodeId, bytes]]:
    compact, roots, store = CompactRange(), [], {}
    for data in KAT_LEAVES:
        for node in compact.append(leaf_hash(data)):
            store[NodeId(node.level, node.index)] = node.hash
        roots.append(compact.root())
    return roots, store


def test_known_roots_of_the_certificate_transparency_test_tree() -> None:
    roots, _ = _kat_store()
    assert roots == KAT_ROOTS


@pytest.mark.parametrize(("leaf", "size", "expected"), KAT_INCLUSION)
def test_known_inclusion_proofs(leaf: int, size: int, expected: list[str]) -> None:
    _, store = _kat_store()
    proof = inclusion_proof(leaf - 1, size, lambda level, index: store[NodeId(level, index)])
    assert [p.hex() for p in proof] == expected
    verify_inclusion(leaf_hash(KAT_LEAVES[leaf - 1]), leaf - 1, size, proof, KAT_ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "expected"), KAT_CONSISTENCY)
def test_known_consistency_proofs(old: int, new: int, expected: list[str]) -> None:
    _, store = _kat_store()
    proof = consistency_proof(old, new, lambda level, index: store[NodeId(level, index)])
    assert [p.hex() for p in proof] == expected
    verify_consistency(old, new, KAT_ROOTS[old - 1], KAT_ROOTS[new - 1], proof)


# --- Compact range ----------------------------------------------------------------------


def test_compact_range_root_and_completed_nodes_match_the_reference_after_every_append() -> None:
    compact = CompactRange()
    reported: list[Node] = []
    for size in range(1, MAX_SIZE + 1):
        completed = compact.append(leaf_hash(LEAF_DATA[size - 1]))
        assert completed[0] == Node(0, size - 1, leaf_hash(LEAF_DATA[size - 1]))
        assert [n.level for n in completed] == list(range(len(completed)))
        for node in completed:
            assert node.hash == ref_mth(node.index << node.level, (node.index + 1) << node.level)
            assert (node.index + 1) << node.level == size  # completed by this very leaf
        reported.extend(completed)
        assert compact.size == size
        assert len(compact.hashes) == size.bit_count()
        assert compact.root() == ref_mth(0, size)
    every_perfect_subtree = {
        (level, index)
        for level in range(MAX_SIZE.bit_length())
        for index in range(MAX_SIZE >> level)
    }
    assert sorted((n.level, n.index) for n in reported) == sorted(every_perfect_subtree)


@pytest.mark.parametrize("size", [*SMALL_SIZES, *LARGE_SIZES])
def test_compact_range_round_trips_through_bytes(size: int) -> None:
    compact = CompactRange()
    for data in LEAF_DATA[:size]:
        compact.append(leaf_hash(data))
    restored = CompactRange.from_bytes(size, compact.to_bytes())
    assert (restored.size, restored.hashes, restored.root()) == (
        compact.size, compact.hashes, compact.root()
    )
    assert len(compact.to_bytes()) == 32 * size.bit_count()
    if size < MAX_SIZE:  # it goes on growing as the original would
        restored.append(leaf_hash(LEAF_DATA[size]))
        assert restored.root() == ref_mth(0, size + 1)


def test_compact_range_from_bytes_checks_the_hash_count() -> None:
    assert CompactRange.from_bytes(0, b"").root() == EMPTY_ROOT
    with pytest.raises(ValueError, match="96 bytes, got 64"):
        CompactRange.from_bytes(7, bytes(64))
    with pytest.raises(ValueError, match="0 bytes, got 32"):
        CompactRange.from_bytes(0, bytes(32))
    with pytest.raises(ValueError, match="tree size"):
        CompactRange.from_bytes(-1, b"")
    with pytest.raises(ValueError, match="tree size"):
        CompactRange.from_bytes(MAX_TREE_SIZE + 1, bytes(32))
    full = CompactRange.from_bytes(MAX_TREE_SIZE, bytes(32 * 64))
    assert len(full.hashes) == 64
    with pytest.raises(ValueError, match="at most"):
        full.append(bytes(32))


def test_compact_range_append_takes_a_32_byte_leaf_hash() -> None:
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        CompactRange().append(bytes(31))


# --- Inclusion proofs -------------------------------------------------------------------


def check_inclusion(index: int, size: int, *, tamper: bool) -> None:
    leaf, root = leaf_hash(LEAF_DATA[index]), ref_mth(0, size)
    reads: list[NodeId] = []
    proof = inclusion_proof(index, size, reader(size, reads))
    assert proof == ref_path(index, 0, size), (index, size)
    assert reads == inclusion_nodes(index, size)
    assert len(reads) <= 2 * size.bit_length()
    verify_inclusion(leaf, index, size, proof, root)
    if not tamper:
        return
    for what, bad in tampered_proofs(proof, root):
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, bad, root)
            pytest.fail(f"accepted leaf {index}/{size} with {what}")
    for other in {index - 1, index + 1, index ^ 2} - {index}:
        if 0 <= other < size:
            with pytest.raises(ProofError):
                verify_inclusion(leaf, other, size, proof, root)
    # Same root, a size with another proof shape (a taller or shorter tree).
    for other_size in (size * 2, size // 2):
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, other_size, proof, root)
    # A neighbouring size, with that tree's own root.
    for other_size in (size - 1, size + 1):
        if index < other_size <= MAX_SIZE and ref_path(index, 0, other_size) != proof:
            with pytest.raises(ProofError):
                verify_inclusion(leaf, index, other_size, proof, ref_mth(0, other_size))
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(b"another leaf"), index, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, proof, EMPTY_ROOT)


@pytest.mark.parametrize("size", SMALL_SIZES)
def test_every_inclusion_proof_in_small_trees(size: int) -> None:
    for index in range(size):
        check_inclusion(index, size, tamper=True)


@pytest.mark.parametrize("size", LARGE_SIZES)
def test_every_inclusion_proof_in_large_trees(size: int) -> None:
    sampled = set(random.Random(size).sample(range(size), 40)) | {0, size // 2, size - 1}
    for index in range(size):
        check_inclusion(index, size, tamper=index in sampled)


def test_a_proof_binds_the_size_only_through_the_root() -> None:
    # Leaf 0 has the same proof shape in trees of 5 and 6 leaves, so a size-5 proof and
    # root also "verify" for size 6: callers must take size and root from one checkpoint.
    proof = inclusion_proof(0, 5, reader(5))
    verify_inclusion(leaf_hash(LEAF_DATA[0]), 0, 6, proof, ref_mth(0, 5))
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(LEAF_DATA[0]), 0, 6, proof, ref_mth(0, 6))


def test_inclusion_verification_edge_cases() -> None:
    leaf = leaf_hash(LEAF_DATA[0])
    verify_inclusion(leaf, 0, 1, [], leaf)  # a one-leaf tree's root is its leaf
    with pytest.raises(ProofError, match="outside a tree of size 1"):
        verify_inclusion(leaf, 1, 1, [], leaf)
    with pytest.raises(ProofError, match="outside a tree of size 0"):
        verify_inclusion(leaf, 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="outside"):
        verify_inclusion(leaf, -1, 4, [], leaf)
    with pytest.raises(ProofError, match="too long"):
        verify_inclusion(leaf, 0, 1, [leaf], leaf)
    with pytest.raises(ProofError, match="too short"):
        verify_inclusion(leaf, 0, 2, [], leaf)
    with pytest.raises(ProofError, match="leads to root"):
        verify_inclusion(leaf, 0, 2, [leaf], leaf)
    with pytest.raises(ProofError, match="proof hash 0 must be 32 bytes"):
        verify_inclusion(leaf, 0, 2, [b""], leaf)
    with pytest.raises(ProofError, match="root must be 32 bytes"):
        verify_inclusion(leaf, 0, 1, [], b"short")


def test_inclusion_generation_rejects_impossible_requests() -> None:
    for index, size in ((0, 0), (1, 1), (-1, 3), (0, MAX_TREE_SIZE + 1)):
        with pytest.raises(ValueError):
            inclusion_nodes(index, size)
    with pytest.raises(ValueError, match=r"stored node \(0, 1\) must be 32 bytes"):
        inclusion_proof(0, 2, lambda level, index: b"not a hash")


# --- Consistency proofs -----------------------------------------------------------------


def check_consistency(old: int, new: int, *, tamper: bool) -> None:
    old_root, new_root = ref_mth(0, old), ref_mth(0, new)
    reads: list[NodeId] = []
    proof = consistency_proof(old, new, reader(new, reads))
    assert proof == ref_proof(old, new), (old, new)
    assert reads == consistency_nodes(old, new)
    assert len(reads) <= 2 * new.bit_length()
    verify_consistency(old, new, old_root, new_root, proof)
    if not tamper or old == new:
        return
    for what, bad in [*tampered_proofs(proof, new_root), ("empty proof", [])]:
        with pytest.raises(ProofError):
            verify_consistency(old, new, old_root, new_root, bad)
            pytest.fail(f"accepted {old}->{new} with {what}")
    for bad_old, bad_new in ((new_root, new_root), (old_root, old_root), (new_root, old_root),
                             (EMPTY_ROOT, new_root), (old_root, EMPTY_ROOT)):
        with pytest.raises(ProofError):
            verify_consistency(old, new, bad_old, bad_new, proof)
    # Other sizes with the same roots (transparency-dev/merkle's probes) ...
    for other_old, other_new in ((old - 1, new), (old + 1, new), (old ^ 2, new),
                                 (old, new * 2), (old, new // 2)):
        with pytest.raises(ProofError):
            verify_consistency(other_old, other_new, old_root, new_root, proof)
    # ... and with those trees' own roots.
    for other_old, other_new in ((old - 1, new), (old + 1, new), (old, new - 1),
                                 (old, new + 1)):
        if 1 <= other_old < other_new <= MAX_SIZE and ref_proof(other_old, other_new) != proof:
            with pytest.raises(ProofError):
                verify_consistency(other_old, other_new, ref_mth(0, other_old),
                                   ref_mth(0, other_new), proof)


@pytest.mark.parametrize("new", SMALL_SIZES)
def test_every_consistency_proof_in_small_trees(new: int) -> None:
    for old in range(1, new + 1):
        check_consistency(old, new, tamper=True)


@pytest.mark.parametrize("new", LARGE_SIZES)
def test_sampled_consistency_proofs_in_large_trees(new: int) -> None:
    rng = random.Random(new)
    olds = {1, 2, 3, new - 1, new} | {1 << k for k in range(new.bit_length()) if 1 << k <= new}
    olds |= set(rng.sample(range(1, new + 1), 60))
    for old in sorted(olds):
        check_consistency(old, new, tamper=True)
    for old in range(1, new + 1):  # every old size, untampered
        check_consistency(old, new, tamper=False)


def test_consistency_verification_edge_cases() -> None:
    root = ref_mth(0, 3)
    verify_consistency(3, 3, root, root, [])
    with pytest.raises(ProofError, match="equal sizes need an empty proof"):
        verify_consistency(3, 3, root, root, [root])
    with pytest.raises(ProofError, match="different roots"):
        verify_consistency(3, 3, root, EMPTY_ROOT, [])
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 3, EMPTY_ROOT, root, [])
    with pytest.raises(ProofError, match="smaller"):
        verify_consistency(4, 3, ref_mth(0, 4), root, [])
    with pytest.raises(ProofError, match="is empty"):
        verify_consistency(2, 3, ref_mth(0, 2), root, [])
    with pytest.raises(ProofError, match="old root must be 32 bytes"):
        verify_consistency(3, 3, b"", root, [])


def test_consistency_generation_rejects_impossible_requests() -> None:
    assert consistency_nodes(5, 5) == []
    for old, new in ((0, 3), (4, 3), (1, MAX_TREE_SIZE + 1)):
        with pytest.raises(ValueError):
            consistency_nodes(old, new)


# --- Properties over random trees -------------------------------------------------------


@given(st.integers(1, MAX_SIZE).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_random_inclusion_proofs_match_the_reference(size_index: tuple[int, int]) -> None:
    size, index = size_index
    check_inclusion(index, size, tamper=False)


@given(st.integers(1, MAX_SIZE).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_random_consistency_proofs_match_the_reference(sizes: tuple[int, int]) -> None:
    check_consistency(*sizes, tamper=False)


@given(st.integers(0, MAX_TREE_SIZE))
def test_proof_plans_stay_logarithmic_up_to_the_largest_tree(size: int) -> None:
    if size >= 1:
        nodes = inclusion_nodes(size - 1, size) + inclusion_nodes(0, size)
        assert all((n.index + 1) << n.level <= size for n in nodes)
        assert len(inclusion_nodes(size // 2, size)) <= 2 * 64
    if size >= 2:
        nodes = consistency_nodes(size // 2 or 1, size)
        assert all((n.index + 1) << n.level <= size for n in nodes)
        assert len(nodes) <= 2 * 64
