"""What a committed batch did: the counts the daemon logs and exports as metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

REJECTED_CONFLICT = "conflict"
"""Rejection kind: an audit_id already chained for the tenant with different content."""
REJECTED_REFUSED = "refused"
"""Rejection kind: PostgreSQL refused the record's content."""


@dataclass(slots=True)
class BatchOutcome:
    """What one committed batch did; `next_offsets` is what to commit to Kafka."""

    chained: int = 0
    genesis: int = 0
    duplicates: int = 0
    already_committed: int = 0
    rejected: int = 0
    rejected_by_kind: Counter[str] = field(default_factory=Counter)
    next_offsets: dict[int, int] = field(default_factory=dict)
    tenants: set[str] = field(default_factory=set)
    event_timestamps: list[str] = field(default_factory=list)
    """Rendered timestamps of the chained events (for end-to-end latency metrics)."""
    checkpointed: list[str] = field(default_factory=list)
    """Tenants whose checkpoint this batch signed: to publish once it committed."""
