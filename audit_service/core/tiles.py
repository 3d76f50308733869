"""Tile storage of a Merkle tree (C2SP tlog-tiles, tile height 8): which nodes to keep,
which tiles a proof needs, and any perfect subtree's hash from those tiles.

Only levels 0, 8, 16, ... exist in storage: level 0 is the leaves (the records' own
`record_hash`, never copied), the others one row per node. A "tile" is the up-to-256
consecutive nodes of one stored level below a multiple of 256; the node at (level, index)
for a level in between is the fold of the 2**(level % 8) nodes of the stored level below
it, all inside one tile. A proof knows up front which subtrees it reads
(`merkle.inclusion_nodes` / `consistency_nodes`), so `tiles_for` lists their tiles and the
caller fetches all of them at once: one read whatever the tree's size, not one per stored
level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from audit_service.core.merkle import Node, NodeId, node_hash

TILE_HEIGHT: Final = 8
"""Levels per tile: nodes are kept at levels that are multiples of this."""
TILE_WIDTH: Final = 1 << TILE_HEIGHT
"""Nodes per full tile."""


@dataclass(frozen=True, slots=True, order=True)
class Tile:
    """Nodes [start, end) of stored level `level` (0: the leaves), one tile of a tree."""

    level: int
    start: int
    end: int


TileFetcher = Callable[[Sequence[Tile]], Mapping[Tile, list[bytes]]]
"""`fetch(tiles)`: for each tile, the kept hashes of its nodes in order (as many as exist;
at level 0 the leaf hashes)."""


class TileError(ValueError):
    """Storage holds fewer nodes than a complete tree of the requested size needs."""


def nodes_to_store(completed: Sequence[Node]) -> Sequence[Node]:
    """Of the nodes one `CompactRange.append` completed (levels 0, 1, 2, ... in order), the
    ones storage keeps: levels 8, 16, ... (level 0 is the record itself)."""
    return completed[TILE_HEIGHT::TILE_HEIGHT]


def tiles_for(size: int, nodes: Iterable[NodeId]) -> list[Tile]:
    """The tiles, each once and in order, that the perfect subtrees `nodes` of a tree of
    `size` leaves are folded from."""
    return sorted({_locate(size, node)[0] for node in nodes})


class TileReader:
    """`node(level, index)` for the perfect subtrees of a tree of `size` leaves whose tiles
    were fetched (see `merkle.NodeReader`)."""

    def __init__(self, size: int, tiles: Mapping[Tile, list[bytes]]):
        for tile, hashes in tiles.items():
            if len(hashes) != tile.end - tile.start:
                what = "leaves" if tile.level == 0 else f"stored nodes of level {tile.level}"
                raise TileError(
                    f"{what} [{tile.start}, {tile.end}) are incomplete: found {len(hashes)} "
                    f"of {tile.end - tile.start} (a tree of {size} needs them)")
        self.size = size
        self._tiles = tiles

    @classmethod
    def fetched(cls, size: int, nodes: Sequence[NodeId], fetch: TileFetcher) -> TileReader:
        """A reader of `nodes`, their tiles fetched in one call."""
        return cls(size, fetch(tiles_for(size, nodes)))

    def node(self, level: int, index: int) -> bytes:
        tile, offset, width = _locate(self.size, NodeId(level, index))
        return _perfect_root(self._tiles[tile][offset : offset + width])


def _locate(size: int, node: NodeId) -> tuple[Tile, int, int]:
    """The tile `node` is folded from, its first position in it and how many it spans."""
    level, index = node.level, node.index
    if level < 0 or index < 0 or (index + 1) << level > size:
        raise ValueError(f"node ({level}, {index}) is not a complete subtree of a tree of {size}")
    base = level - level % TILE_HEIGHT
    width = 1 << (level - base)
    first = index * width
    start = first - first % TILE_WIDTH
    tile = Tile(base, start, min(start + TILE_WIDTH, size >> base))
    return tile, first - start, width


def _perfect_root(hashes: list[bytes]) -> bytes:
    """The root over adjacent equal subtrees, 2**k of them: pair up level by level."""
    while len(hashes) > 1:
        hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]
