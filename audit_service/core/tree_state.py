"""A tenant's Merkle tree as kept beside its head, and when it is due a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from audit_service.core.merkle import CompactRange


@dataclass(slots=True)
class TreeState:
    """The tree of a tenant's records (compact range) and what its newest checkpoint covers.

    `checkpointed_at` starts the `checkpoint_every_s` clock: when the newest checkpoint was
    signed or, before the first, when the chain began; None (a chain migrated from before
    checkpoints) counts as long ago.
    """

    tree: CompactRange
    checkpointed_size: int
    checkpointed_at: datetime | None

    @property
    def grown(self) -> int:
        """Records appended since the newest checkpoint."""
        return self.tree.size - self.checkpointed_size


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """`checkpoint_every_records` and `checkpoint_every_s`: sign when a tree grew by that
    many records, or when it grew at all and that long has passed."""

    every_records: int
    every_s: float

    def due(self, state: TreeState, now: datetime) -> bool:
        if state.grown <= 0:
            return False
        if state.grown >= self.every_records or state.checkpointed_at is None:
            return True
        return (now - state.checkpointed_at).total_seconds() >= self.every_s
