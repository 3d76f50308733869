"""Proof files built independently of the service, for the proof verifiers' tests.

The trees come from a reference written here from RFC 9162 section 2.1's recursive
definitions (MTH, PATH, PROOF/SUBPROOF with k the largest power of two below n), sharing
no code with `audit_service.core.merkle`; the records come from the core's chain functions
(so every record_hash is real) and the checkpoints are signed with a real key. The files
follow the contract of `audit-service prove` (docs/hash-chain.md, "Proofs").
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

from audit_service.auditing.export_verify import export_line
from audit_service.core.chain import ChainHead, advance, chain_event, genesis_record
from audit_service.core.checkpoint import format_checkpoint, tenant_origin
from audit_service.core.signed_note import SignerKey, generate_signer, sign_note

TENANT = "tenant-proofs"
OTHER_TENANT = "tenant-other"
ORIGIN = "audit.example.com"
SIGNER = generate_signer("audit-proofs")
STRANGER = generate_signer("audit-proofs")
"""Same key name, another key: its signatures must not count."""
RECORD_COUNT = 1100
"""Records in the test log: the largest tree tested is 1025."""
START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _records() -> list[dict[str, Any]]:
    genesis = genesis_record(TENANT, START)
    records, head = [genesis], advance(ChainHead.empty(TENANT), genesis)
    for n in range(1, RECORD_COUNT):
        event = {
            "audit_id": f"00000000-0000-4000-8000-{n:012d}", "tenant_id": TENANT,
            "timestamp": "2026-12-06T12:00:00.000000Z", "event_type": "alert.classified",
            "event_category": "decision", "severity": "info", "actor_type": "agent",
            "actor_id": f"triage-agent-{n % 7}", "actor_permissions": ["alerts:read"],
            "investigation_id": f"inv-{n}", "alert_id": "", "entity_ids": [f"host-{n}"],
            "context": {"n": n, "ratio": n / 7, "note": "é 😀"}, "decision": {},
            "outcome": {}, "source_service": "tests", "record_version": "1.0",
        }
        record = chain_event(head, event, START)
        records.append(record)
        head = advance(head, record)
    return records


# --- RFC 9162 section 2.1, the recursive definitions -------------------------------


class ReferenceTree:
    """RFC 9162 section 2.1 over D = `leaf_data`, top-down as the RFC defines it."""

    def __init__(self, leaf_data: Sequence[bytes]):
        self._leaves = list(leaf_data)
        self._mth: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi])."""
        if (lo, hi) not in self._mth:
            n = hi - lo
            if n == 1:
                value = _sha256(b"\x00" + self._leaves[lo])
            else:
                k = _k(n)
                value = _sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi))
            self._mth[lo, hi] = value
        return self._mth[lo, hi]

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        """PATH(m, D[lo:hi]), m relative to lo."""
        n = hi - lo
        if n == 1:
            return []
        k = _k(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        """SUBPROOF(m, D[lo:hi], b)."""
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = _k(n)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, b), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        """PROOF(m, D[0:n])."""
        return self.subproof(m, 0, n, True)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Log:
    """One tenant's records (export lines) and their reference tree."""

    def __init__(self, lines: Sequence[str]):
        self.records = [json.loads(line) for line in lines]
        self.tenant = self.records[0]["tenant_id"]
        self.tree = ReferenceTree([bytes.fromhex(r["record_hash"]) for r in self.records])

    def root(self, size: int) -> bytes:
        return self.tree.mth(0, size)


LOG = Log([export_line(record) for record in _records()])
RECORDS = LOG.records


# --- Proof files ------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def note(size: int, *, tenant: str = TENANT, signer: SignerKey = SIGNER,
         root: bytes | None = None, log: Log = LOG) -> str:
    """A signed checkpoint: of the first `size` records of `log`, unless `root` is given."""
    return _note(size, tenant, signer, log.root(size) if root is None else root)


@cache
def _note(size: int, tenant: str, signer: SignerKey, root: bytes) -> str:
    return sign_note(format_checkpoint(tenant_origin(ORIGIN, tenant), size, root), [signer])


def inclusion_file(index: int, size: int, log: Log = LOG) -> dict[str, Any]:
    """What `prove inclusion --sequence index --tree-size size` writes, as a dict."""
    return {
        "tenant_id": log.tenant, "sequence_number": index, "tree_size": size,
        "leaf_index": index, "record": copy.deepcopy(log.records[index]),
        "inclusion_proof": [b64(h) for h in log.tree.path(index, 0, size)],
        "checkpoint": note(size, tenant=log.tenant, log=log),
    }


def consistency_file(old_size: int, new_size: int, log: Log = LOG) -> dict[str, Any]:
    """What `prove consistency --from-size old --to-size new` writes, as a dict."""
    return {
        "tenant_id": log.tenant, "old_size": old_size, "new_size": new_size,
        "consistency_proof": [b64(h) for h in log.tree.proof(old_size, new_size)],
        "old_checkpoint": note(old_size, tenant=log.tenant, log=log),
        "new_checkpoint": note(new_size, tenant=log.tenant, log=log),
    }


def encoded(proof_file: dict[str, Any]) -> bytes:
    """The file's bytes, as `prove` would print them."""
    return (json.dumps(proof_file, indent=2) + "\n").encode()


def verifier_text() -> str:
    """SIGNER's verifier key, as in its NAME.pub file."""
    return SIGNER.verifier().to_text()
