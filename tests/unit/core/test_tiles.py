"""Tile storage against a reference written here from RFC 9162's recursive definitions.

The store is filled as the write path fills it (every `CompactRange.append`, keeping only
`nodes_to_store`); proofs built over a `TileReader` must equal the reference's PATH and
PROOF byte for byte, for every proof of every tree up to 70 leaves and sampled ones of
trees around the tile boundaries, and fetch only a handful of tiles, in one call.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from functools import cache

import pytest

from audit_service.core.merkle import (
    CompactRange,
    NodeId,
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
)
from audit_service.core.tiles import TILE_HEIGHT, Tile, TileError, TileReader, nodes_to_store

SMALL_SIZES = range(1, 71)
LARGE_SIZES = (255, 256, 257, 511, 513, 65_536, 65_539)
MAX_SIZE = max(LARGE_SIZES)
LEAF_DATA = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(MAX_SIZE)]


# --- The reference: RFC 9162 section 2.1, over D[lo:hi] of LEAF_DATA ---------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def ref_mth(lo: int, hi: int) -> bytes:
    if hi - lo == 1:
        return hashlib.sha256(b"\x00" + LEAF_DATA[lo]).digest()
    k = _k(hi - lo)
    return hashlib.sha256(b"\x01" + ref_mth(lo, lo + k) + ref_mth(lo + k, hi)).digest()


def ref_path(m: int, lo: int, hi: int) -> list[bytes]:
    if hi - lo == 1:
        return []
    k = _k(hi - lo)
    if m < k:
        return [*ref_path(m, lo, lo + k), ref_mth(lo + k, hi)]
    return [*ref_path(m - k, lo + k, hi), ref_mth(lo, lo + k)]


def ref_subproof(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if b else [ref_mth(lo, hi)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, lo, lo + k, b), ref_mth(lo + k, hi)]
    return [*ref_subproof(m - k, lo + k, hi, False), ref_mth(lo, lo + k)]


# --- A tile store filled the way the batch fills it -------------------------------------


def _build() -> tuple[list[bytes], dict[int, list[bytes]]]:
    compact, leaves, stored = CompactRange(), [], {}
    for data in LEAF_DATA:
        leaf = leaf_hash(data)
        leaves.append(leaf)
        for node in nodes_to_store(compact.append(leaf)):
            level = stored.setdefault(node.level, [])
            assert node.index == len(level)  # appended in index order, never twice
            level.append(node.hash)
    return leaves, stored


LEAVES, STORED = _build()


class CountingStore:
    """The fetcher over the in-memory store, refusing tiles past `size` or not aligned to
    256, and recording each call's tiles."""

    def __init__(self, size: int):
        self.size = size
        self.calls: list[list[Tile]] = []

    def fetch(self, tiles: Sequence[Tile]) -> dict[Tile, list[bytes]]:
        self.calls.append(list(tiles))
        for tile in tiles:
            assert tile.level % TILE_HEIGHT == 0 and tile.start % 256 == 0
            assert 0 <= tile.start < tile.end <= tile.start + 256
            assert tile.end << tile.level <= self.size
        return {tile: (LEAVES if tile.level == 0 else STORED[tile.level])[tile.start:tile.end]
                for tile in tiles}

    def reader(self, nodes: Sequence[NodeId]) -> TileReader:
        return TileReader.fetched(self.size, nodes, self.fetch)


def _tile_bound(size: int) -> int:
    """Two tiles per stored level a tree of `size` has: the path's and the right edge's."""
    return 2 * ((size - 1).bit_length() // TILE_HEIGHT + 1)


def check_fetches(store: CountingStore) -> None:
    """One fetch call, of distinct tiles, at most two per stored level."""
    assert len(store.calls) == 1
    (tiles,) = store.calls
    assert len(set(tiles)) == len(tiles) <= _tile_bound(store.size)


def check_inclusion(index: int, size: int) -> None:
    store = CountingStore(size)
    reader = store.reader(inclusion_nodes(index, size))
    assert inclusion_proof(index, size, reader.node) == ref_path(index, 0, size), (index, size)
    check_fetches(store)


def check_consistency(old: int, new: int) -> None:
    store = CountingStore(new)
    reader = store.reader(consistency_nodes(old, new))
    proof = consistency_proof(old, new, reader.node)
    assert proof == ref_subproof(old, 0, new, True), (old, new)
    check_fetches(store)


def test_only_levels_8_16_24_are_kept() -> None:
    assert sorted(STORED) == [8, 16]
    assert len(STORED[8]) == MAX_SIZE // 256 and len(STORED[16]) == MAX_SIZE // 65_536
    for level, hashes in STORED.items():
        for index, value in enumerate(hashes):
            assert value == ref_mth(index << level, (index + 1) << level)


@pytest.mark.parametrize("size", SMALL_SIZES)
def test_every_proof_of_small_trees(size: int) -> None:
    for index in range(size):
        check_inclusion(index, size)
    for old in range(1, size + 1):
        check_consistency(old, size)


@pytest.mark.parametrize("size", LARGE_SIZES)
def test_sampled_proofs_of_trees_around_tile_boundaries(size: int) -> None:
    rng = random.Random(size)
    edges = {0, 1, 127, 128, 255, 256, 257, size // 2, size - 257, size - 256, size - 2,
             size - 1}
    for index in sorted({i for i in edges if 0 <= i < size} | set(rng.sample(range(size), 12))):
        check_inclusion(index, size)
    for old in sorted({o for o in {e + 1 for e in edges} if 1 <= o <= size}
                      | set(rng.sample(range(1, size + 1), 8))):
        check_consistency(old, size)


def test_every_node_of_a_tree_in_a_tree_spanning_level_16() -> None:
    size = 65_539
    nodes = [NodeId(level, index) for level in (0, 7, 8, 9, 15, 16)
             for index in {0, 1, (size >> level) - 1} & set(range(size >> level))]
    reader = CountingStore(size).reader(nodes)
    for node in nodes:
        assert reader.node(node.level, node.index) == ref_mth(
            node.index << node.level, (node.index + 1) << node.level)


def test_a_missing_stored_node_is_reported_not_guessed() -> None:
    size = 600
    store = CountingStore(size)

    def no_stored_nodes(tiles: Sequence[Tile]) -> dict[Tile, list[bytes]]:
        return {tile: hashes if tile.level == 0 else []
                for tile, hashes in store.fetch(tiles).items()}

    with pytest.raises(TileError, match=r"stored nodes of level 8 \[0, 2\) are incomplete"):
        TileReader.fetched(size, inclusion_nodes(0, size), no_stored_nodes)


def test_nodes_past_the_tree_are_refused() -> None:
    store = CountingStore(300)
    with pytest.raises(ValueError, match="not a complete subtree"):
        store.reader([NodeId(8, 1)])
    with pytest.raises(ValueError, match="not a complete subtree"):
        store.reader([NodeId(0, 300)])
    assert not store.calls
