"""What signed checkpoints cost the write path: the daemon's settings for a run with them
on, and the tree upkeep every record pays whether or not signing is on."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from audit_service.core.merkle import CompactRange, leaf_hash
from audit_service.core.signed_note import generate_signer

EVERY_RECORDS = 1000
"""The default checkpoint_every_records, as the issues measure it."""
UPKEEP_LEAVES = 200_000


def checkpoint_environ(scratch: Path) -> dict[str, str]:
    """AUDIT_* settings that turn signing on (a fresh key, a sink in `scratch`)."""
    key, sink = scratch / "bench.key", scratch / "sink"
    sink.mkdir(exist_ok=True)
    key.write_text(generate_signer("bench").to_text() + "\n")
    key.chmod(0o600)
    return {"AUDIT_CHECKPOINT_KEY_FILE": str(key), "AUDIT_CHECKPOINT_DIR": str(sink),
            "AUDIT_CHECKPOINT_EVERY_RECORDS": str(EVERY_RECORDS)}


def tree_upkeep_us_per_record(leaves: int = UPKEEP_LEAVES) -> float:
    """CPU microseconds per record of what the batch does for the tree: hex-decode the
    record hash, hash the leaf, append it to the compact range."""
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(leaves)]
    tree = CompactRange()
    started = time.process_time()
    for record_hash in hashes:
        tree.append(leaf_hash(bytes.fromhex(record_hash)))
    return (time.process_time() - started) / leaves * 1e6
