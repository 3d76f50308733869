"""Signed checkpoints on the write path (SPEC 8), against real PostgreSQL and a real broker.

The trees the daemon keeps are judged by a test-local RFC 9162 implementation over the
records read back from PostgreSQL; the signed notes by `cryptography` directly, from the
verifier key text, without the service's note parser.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from support import chain_of, produce_events, run_until_idle, scalar, service_settings, wire_event

from audit_service.config import Settings
from audit_service.core.signed_note import generate_signer


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH, recursively, over the raw leaf data."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    split = 1
    while split * 2 < len(leaves):
        split *= 2
    left, right = reference_root(leaves[:split]), reference_root(leaves[split:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_note_independently(note: str, verifier_key: str) -> str:
    """The note's text after checking its one signature with the verifier key text
    (name+hex id+base64(0x01 || key)) and the signed-note layout, by hand."""
    name, key_id_hex, key_b64 = verifier_key.split("+", 2)
    key = base64.b64decode(key_b64)
    assert key[0] == 1
    text, _, signature_line = note.rpartition("\n\n")
    text += "\n"
    dash, signer, signature_b64 = signature_line.rstrip("\n").split(" ")
    assert dash == "\u2014" and signer == name
    signature = base64.b64decode(signature_b64)
    expected_id = hashlib.sha256(name.encode() + b"\n\x01" + key[1:]).digest()[:4]
    assert signature[:4] == expected_id == bytes.fromhex(key_id_hex)
    Ed25519PublicKey.from_public_bytes(key[1:]).verify(signature[4:], text.encode())
    return text


@pytest.fixture
def signer_files(tmp_path: Path) -> tuple[Path, str]:
    signer = generate_signer("audit-test")
    key_file = tmp_path / "audit-test.key"
    key_file.write_text(signer.to_text() + "\n")
    key_file.chmod(0o600)
    return key_file, signer.verifier().to_text()


def checkpoint_settings(settings: Settings, key_file: Path, sink: Path,
                        **overrides: Any) -> Settings:
    return service_settings(
        settings.database_url, settings.kafka_bootstrap_servers, settings.kafka_topic,
        batch_size=settings.batch_size, checkpoint_key_file=str(key_file),
        checkpoint_dir=str(sink), **overrides)


def sink_lines(sink: Path, tenant: str) -> list[dict[str, Any]]:
    path = sink / f"checkpoints-{tenant}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_checkpoints_sign_the_rfc9162_root_of_the_stored_records(
    settings: Settings, signer_files: tuple[Path, str], tmp_path: Path
) -> None:
    key_file, verifier_key = signer_files
    sink = tmp_path / "sink"
    sink.mkdir()
    tenants = ["tenant-a", "tenant-b", ".", ".."]
    produce_events(settings.kafka_bootstrap_servers, settings.kafka_topic,
                   [wire_event(tenant) for _ in range(60) for tenant in tenants])
    run_until_idle(checkpoint_settings(settings, key_file, sink, checkpoint_every_records=25))

    assert sorted(p.name for p in sink.iterdir()) == sorted(
        f"checkpoints-{tenant}.jsonl" for tenant in tenants)
    for tenant in tenants:
        records = chain_of(settings.database_url, tenant)
        lines = sink_lines(sink, tenant)
        sizes = [line["tree_size"] for line in lines]
        assert sizes == sorted(set(sizes)) and sizes[-1] == len(records) == 61
        for line in lines:
            text = verify_note_independently(line["note"], verifier_key)
            root = reference_root(
                [bytes.fromhex(r["record_hash"]) for r in records[: line["tree_size"]]])
            assert text == f"audit-test/{tenant}\n{line['tree_size']}\n" \
                           f"{base64.b64encode(root).decode()}\n"
            assert line["root_hash"] == base64.b64encode(root).decode()
            assert line["tenant_id"] == tenant
    stored = scalar(settings.database_url, "SELECT count(*) FROM audit_checkpoints")
    assert stored == sum(len(sink_lines(sink, tenant)) for tenant in tenants)


def test_a_key_readable_by_others_is_refused_before_connecting(
    settings: Settings, signer_files: tuple[Path, str], tmp_path: Path
) -> None:
    from audit_service.core.errors import ConfigurationError
    from audit_service.ingest.daemon import Daemon

    key_file, _ = signer_files
    os.chmod(key_file, 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        Daemon(checkpoint_settings(settings, key_file, tmp_path))
