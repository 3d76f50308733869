"""Proof tests' helpers: a chain written through the real batch path with checkpoints, and
a reference RFC 9162 (section 2.1) written here from the recursive definitions, sharing no
code with `audit_service.core.merkle` or `core.tiles`."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from sqlalchemy import create_engine
from support import encode, wire_event

from audit_service.core.events import ValidationLimits
from audit_service.core.messages import ConsumedMessage
from audit_service.core.signed_note import SignerKey
from audit_service.core.tree_state import CheckpointPolicy
from audit_service.ingest.batch import commit_prepared, prepare_batch
from audit_service.ingest.checkpointing import Checkpointer

ORIGIN = "audit-test"
GROUP = "audit-test"


def chain_with_checkpoints(database_url: str, signer: SignerKey, tenant: str,
                           batches: list[int], refused_in: int | None = None) -> None:
    """Chain `batches[i]` events per batch with `commit_prepared`, signing a checkpoint
    after every batch of 100 or more; batch `refused_in` also carries an event PostgreSQL
    refuses, so it is redone row by row (the isolation path)."""
    checkpointer = Checkpointer(signer, ORIGIN, CheckpointPolicy(every_records=100,
                                                                 every_s=3600.0))
    engine = create_engine(database_url)
    offset = 0
    try:
        for number, count in enumerate(batches):
            events = [wire_event(tenant) for _ in range(count)]
            if number == refused_in:
                # Too long for a btree index entry: only PostgreSQL can tell.
                events.insert(count // 2, wire_event(tenant, actor_id=secrets.token_hex(6000)))
            messages = [ConsumedMessage("audit.events", 0, offset + i, *encode(event))
                        for i, event in enumerate(events)]
            offset += len(messages)
            now = datetime.now(UTC)
            commit_prepared(engine, prepare_batch(messages, ValidationLimits(), now), GROUP,
                            checkpointer=checkpointer)
    finally:
        engine.dispose()


class Reference:
    """MTH, PATH and PROOF of RFC 9162 2.1 over raw leaf data (the 32-byte record hashes)."""

    def __init__(self, leaves: list[bytes]):
        self.leaves = leaves
        self._mth: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        if (lo, hi) not in self._mth:
            if hi - lo == 1:
                value = hashlib.sha256(b"\x00" + self.leaves[lo]).digest()
            else:
                k = _k(hi - lo)
                value = hashlib.sha256(
                    b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi)).digest()
            self._mth[lo, hi] = value
        return self._mth[lo, hi]

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        if hi - lo == 1:
            return []
        k = _k(hi - lo)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        return self._subproof(m, 0, n, True)

    def _subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        if m == hi - lo:
            return [] if b else [self.mth(lo, hi)]
        k = _k(hi - lo)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, b), self.mth(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k
