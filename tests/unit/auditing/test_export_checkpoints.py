"""An export checked offline against signed checkpoints: the tree must be built from the
hashes the chain check accepted, so a rewritten and rehashed export fails however its lines
dress up the record_hash they state.

Records come from the core's chain functions, checkpoints are signed here, and the roots
are the test-local RFC 9162 roots of support.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from support import reference_root

from audit_service.auditing.checkpoint_verify import sink_files
from audit_service.auditing.export_verify import export_line, verify_export_with_checkpoints
from audit_service.core.chain import (
    ChainHead,
    advance,
    canonical_json,
    chain_event,
    genesis_record,
)
from audit_service.core.checkpoint import SignedCheckpoint, format_checkpoint
from audit_service.core.signed_note import generate_signer, sign_note

TENANT = "tenant-x"
SIGNER = generate_signer("audit-unit")
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _event(n: int, actor: str = "triage-agent") -> dict[str, Any]:
    return {"audit_id": f"00000000-0000-4000-8000-{n:012d}", "tenant_id": TENANT,
            "timestamp": "2026-12-06T12:00:00.000000Z", "event_type": "alert.classified",
            "event_category": "decision", "severity": "info", "actor_type": "agent",
            "actor_id": actor, "actor_permissions": [], "investigation_id": "",
            "alert_id": "", "entity_ids": [], "context": {}, "decision": {}, "outcome": {},
            "source_service": "tests", "record_version": "1.0"}


def _chain(actors: dict[int, str]) -> list[dict[str, Any]]:
    genesis = genesis_record(TENANT, NOW)
    records, head = [genesis], advance(ChainHead.empty(TENANT), genesis)
    for n in range(1, 12):
        record = chain_event(head, _event(n, actors.get(n, "triage-agent")), NOW)
        records.append(record)
        head = advance(head, record)
    return records


def _files(tmp_path: Path, records: list[dict[str, Any]], name: str) -> Path:
    export = tmp_path / name
    export.write_text("".join(export_line(r) for r in records))
    return export


def _sink(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    sink = tmp_path / "sink"
    sink.mkdir()
    lines = []
    for size in (4, len(records)):
        root = reference_root([bytes.fromhex(r["record_hash"]) for r in records[:size]])
        note = sign_note(format_checkpoint(f"audit-unit/{TENANT}", size, root), [SIGNER])
        lines.append(SignedCheckpoint(TENANT, size, root, note).to_sink_line())
    (sink / f"checkpoints-{TENANT}.jsonl").write_text("".join(lines))
    return sink


def _check(export: Path, sink: Path) -> tuple[bool, list[str]]:
    result, report = verify_export_with_checkpoints(
        str(export), sink_files(sink), [SIGNER.verifier()])
    assert report is not None
    return result.valid and report.valid, [f.reason for f in report.failures]


def test_the_original_export_verifies(tmp_path: Path) -> None:
    original = _chain({})
    assert _check(_files(tmp_path, original, "a.jsonl"), _sink(tmp_path, original)) == (True, [])


def _decoyed_line(record: dict[str, Any], signed_hash: str) -> tuple[str, str]:
    """The forger's line: the rewritten record, a second `record_hash` member holding the
    signed (original) hash at the end, and the hash after previous_hash computed over that
    text, so the line hashes to the hash it states where the chain check reads it."""
    text = canonical_json(record)[:-1] + f',"zz":"","record_hash":"{signed_hash}"}}'
    stated = hashlib.sha256(text.encode()).hexdigest()
    anchor = f'"previous_hash":"{record["previous_hash"]}",'
    at = text.index(anchor) + len(anchor)
    return f'{text[:at]}"record_hash":"{stated}",{text[at:]}\n', stated


def test_a_rehashed_rewrite_fails_even_when_each_line_also_states_the_original_hash(
    tmp_path: Path,
) -> None:
    original = _chain({})
    sink = _sink(tmp_path, original)
    lines = [export_line(record) for record in original[:5]]
    previous = original[4]["record_hash"]
    for real in original[5:]:
        forged = {k: v for k, v in real.items() if k != "record_hash"}
        forged |= {"previous_hash": previous, "actor_id": "mallory"}
        line, previous = _decoyed_line(forged, real["record_hash"])
        lines.append(line)
    export = tmp_path / "decoyed.jsonl"
    export.write_text("".join(lines))
    result, _ = verify_export_with_checkpoints(str(export), {}, [SIGNER.verifier()])
    assert result.valid  # the chain alone accepts the forgery: only the checkpoints can tell

    valid, reasons = _check(export, sink)
    assert not valid
    assert any("root hash does not match" in reason for reason in reasons), reasons
    assert json.loads(lines[5].split(',"zz"')[0] + "}")["actor_id"] == "mallory"
