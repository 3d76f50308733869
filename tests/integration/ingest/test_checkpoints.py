"""Signed checkpoints on the write path (SPEC 8), against real PostgreSQL and a real broker.

The trees the daemon keeps are judged by a test-local RFC 9162 implementation over the
records read back from PostgreSQL; the signed notes by `cryptography` directly, from the
verifier key text, without the service's note parser.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from support import (
    chain_of,
    checkpoint_settings,
    make_signer_files,
    produce_events,
    reference_root,
    run_until_idle,
    scalar,
    sink_lines,
    verify_note_independently,
    wire_event,
)

from audit_service.config import Settings


@pytest.fixture
def signer_files(tmp_path: Path) -> tuple[Path, str]:
    return make_signer_files(tmp_path, "audit-test")


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
