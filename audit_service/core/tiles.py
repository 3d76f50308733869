"""Tile storage of a Merkle tree (C2SP tlog-tiles, tile height 8): which nodes to keep,
and any perfect subtree's hash from the kept ones in a handful of range reads.

Only levels 0, 8, 16, ... exist in storage: level 0 is the leaves (the records' own
`record_hash`, never copied), the others one row per node. A "tile" is the up-to-256
consecutive nodes of one stored level below a multiple of 256; the node at (level, index)
for a level in between is the fold of the 2**(level % 8) nodes of the stored level below
it, all inside one tile. Each tile is read once, in one range read, and cached, so a proof
(O(log n) nodes) costs at most two tiles per stored level: the one along its path and the
one at the tree's right edge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from audit_service.core.merkle import Node, node_hash

TILE_HEIGHT: Final = 8
"""Levels per tile: nodes are kept at levels that are multiples of this."""
TILE_WIDTH: Final = 1 << TILE_HEIGHT
"""Nodes per full tile."""

LeafFetcher = Callable[[int, int], list[bytes]]
"""`leaves(start, end)`: the leaf hashes of leaves [start, end), in order."""
StoredFetcher = Callable[[int, int, int], list[bytes]]
"""`stored(level, start, end)`: the kept hashes of nodes [start, end) of `level`, in order."""


class TileError(ValueError):
    """Storage holds fewer nodes than a complete tree of the requested size needs."""


def nodes_to_store(completed: Sequence[Node]) -> Sequence[Node]:
    """Of the nodes one `CompactRange.append` completed (levels 0, 1, 2, ... in order), the
    ones storage keeps: levels 8, 16, ... (level 0 is the record itself)."""
    return completed[TILE_HEIGHT::TILE_HEIGHT]


class TileReader:
    """`node(level, index)` for any perfect subtree of a tree of `size` leaves, read from
    tile storage through the two fetchers (see `merkle.NodeReader`)."""

    def __init__(self, size: int, leaves: LeafFetcher, stored: StoredFetcher):
        self.size = size
        self._leaves = leaves
        self._stored = stored
        self._tiles: dict[tuple[int, int], list[bytes]] = {}

    @property
    def tiles_read(self) -> int:
        """Range reads issued so far (one per tile)."""
        return len(self._tiles)

    def node(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0 or (index + 1) << level > self.size:
            raise ValueError(
                f"node ({level}, {index}) is not a complete subtree of a tree of {self.size}")
        base = level - level % TILE_HEIGHT
        width = 1 << (level - base)
        first = index * width
        tile = self._tile(base, first // TILE_WIDTH)
        offset = first % TILE_WIDTH
        return _perfect_root(tile[offset : offset + width])

    def _tile(self, level: int, tile_index: int) -> list[bytes]:
        key = (level, tile_index)
        if key not in self._tiles:
            start = tile_index * TILE_WIDTH
            end = min(start + TILE_WIDTH, self.size >> level)
            fetched = (self._leaves(start, end) if level == 0
                       else self._stored(level, start, end))
            if len(fetched) != end - start:
                what = "leaves" if level == 0 else f"stored nodes of level {level}"
                raise TileError(
                    f"{what} [{start}, {end}) are incomplete: found {len(fetched)} of "
                    f"{end - start} (a tree of {self.size} needs them)")
            self._tiles[key] = fetched
        return self._tiles[key]


def _perfect_root(hashes: list[bytes]) -> bytes:
    """The root over adjacent equal subtrees, 2**k of them: pair up level by level."""
    while len(hashes) > 1:
        hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]
