"""The checkpoint sink outside the database, with `audit-service run` as a subprocess.

An unwritable sink (here: its directory missing, as when a volume is not mounted) must not
stop chaining; it shows in /ready and /metrics, and once the sink works again it holds
every committed checkpoint exactly once, in order. A kill -9 after checkpoints were
committed but before they reached the sink loses none: the next start publishes them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from running_daemon import answering, http_get
from support import (
    ServiceProcesses,
    chained_at_least,
    make_signer_files,
    produce_events,
    scalar,
    service_processes,
    wire_event,
)

from audit_service.config import Settings
from audit_service.dev.devstack import free_port

TENANTS = ("tenant-a", "tenant-b", ".", "..")
EVERY_RECORDS = 10
BATCH_SIZE = 8
"""Small batches: each tenant's tree grows a little per batch, so it is checkpointed often."""
WAIT_S = 60.0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[ServiceProcesses]:
    yield from service_processes(tmp_path)


def _key_file(directory: Path) -> Path:
    return make_signer_files(directory, "sink-test")[0]


def _environ(key: Path, sink: Path, port: int) -> dict[str, str]:
    return {"AUDIT_CHECKPOINT_KEY_FILE": str(key), "AUDIT_CHECKPOINT_DIR": str(sink),
            "AUDIT_CHECKPOINT_EVERY_RECORDS": str(EVERY_RECORDS),
            "AUDIT_CHECKPOINT_EVERY_S": "3600", "AUDIT_HEALTH_PORT": str(port),
            "AUDIT_BATCH_SIZE": str(BATCH_SIZE)}


def _ready_checkpoints(port: int) -> dict[str, object]:
    body = answering(port, "/ready")()
    assert body is not None
    return dict(json.loads(body)["checkpoints"])


def _metric(port: int, name: str) -> float | None:
    status, _, body = http_get(port, "/metrics")
    assert status == 200
    found = re.search(rf"^{name} (\S+)$", body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else None


def _table(database_url: str) -> dict[str, list[int]]:
    rows = scalar(database_url, "SELECT json_object_agg(tenant_id, sizes) FROM (SELECT "
                  "tenant_id, array_agg(tree_size ORDER BY tree_size) AS sizes "
                  "FROM audit_checkpoints GROUP BY tenant_id) AS per_tenant")
    return {tenant: list(sizes) for tenant, sizes in (rows or {}).items()}


def _sink(sink: Path) -> dict[str, list[int]]:
    published = {}
    for tenant in TENANTS:
        path = sink / f"checkpoints-{tenant}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        published[tenant] = [json.loads(line)["tree_size"] for line in lines]
    return published


def _produce(settings: Settings, per_tenant: int) -> int:
    events = [wire_event(tenant) for _ in range(per_tenant) for tenant in TENANTS]
    return produce_events(settings.kafka_bootstrap_servers, settings.kafka_topic, events)


def test_an_unwritable_sink_delays_publication_but_never_chaining(
    settings: Settings, daemons: ServiceProcesses, tmp_path: Path
) -> None:
    sink, port = tmp_path / "sink", free_port()
    daemon = daemons.start(settings, **_environ(_key_file(tmp_path), sink, port))
    produced = _produce(settings, per_tenant=30)
    daemon.wait_for(chained_at_least(settings.database_url, produced),
                    WAIT_S, "events chained while the sink is missing")
    committed = scalar(settings.database_url, "SELECT count(*) FROM audit_checkpoints")
    assert committed >= len(TENANTS) * 2

    def reported_pending() -> dict[str, object] | None:
        status = _ready_checkpoints(port)
        return status if status["pending"] == committed and status["error"] else None

    status = daemon.wait_for(reported_pending, WAIT_S,
                             "/ready reporting every committed checkpoint as pending")
    assert str(sink) in str(status["error"])
    assert _metric(port, "audit_checkpoints_pending") == committed

    sink.mkdir()  # the volume is back
    daemon.wait_for(lambda: _ready_checkpoints(port)["pending"] == 0 or None, WAIT_S,
                    "the pending checkpoints published")
    _produce(settings, per_tenant=15)
    daemon.wait_for(chained_at_least(settings.database_url, produced * 3 // 2),
                    WAIT_S, "more events chained")
    assert daemon.stop() == 0

    table = _table(settings.database_url)
    assert _sink(sink) == {tenant: table[tenant] for tenant in TENANTS}
    for tenant in TENANTS:  # the stop signed every tree that grew
        assert table[tenant][-1] == 46


def test_a_kill_between_commit_and_sink_loses_no_checkpoint(
    settings: Settings, daemons: ServiceProcesses, tmp_path: Path
) -> None:
    sink, key = tmp_path / "sink", _key_file(tmp_path)
    daemon = daemons.start(settings, **_environ(key, sink, free_port()))
    produced = _produce(settings, per_tenant=25)
    daemon.wait_for(chained_at_least(settings.database_url, produced),
                    WAIT_S, "events chained")
    daemon.wait_for(
        lambda: scalar(settings.database_url, "SELECT count(*) FROM audit_checkpoints") or None,
        WAIT_S, "checkpoints committed")
    daemon.kill()  # committed to PostgreSQL, never appended: the sink did not exist
    assert not sink.exists()

    sink.mkdir()
    restarted = daemons.start(settings, **_environ(key, sink, port := free_port()))

    def published() -> bool | None:
        if answering(port, "/ready")() is None:
            return None
        status = _ready_checkpoints(port)
        return True if status["pending"] == 0 and status["last_published"] else None

    restarted.wait_for(published, WAIT_S, "the checkpoints of the killed run published")
    assert restarted.stop() == 0
    table = _table(settings.database_url)
    assert _sink(sink) == {tenant: table[tenant] for tenant in TENANTS}
    assert all(sizes[-1] == 26 for sizes in table.values())


def test_a_tree_that_grew_and_went_quiet_is_checkpointed_while_the_daemon_runs(
    settings: Settings, daemons: ServiceProcesses, tmp_path: Path
) -> None:
    sink = tmp_path / "sink"
    sink.mkdir()
    environ = _environ(_key_file(tmp_path), sink, free_port())
    environ |= {"AUDIT_CHECKPOINT_EVERY_RECORDS": "1000", "AUDIT_CHECKPOINT_EVERY_S": "1"}
    daemon = daemons.start(settings, **environ)

    def published(size: int) -> bool | None:
        return True if size in _sink(sink)["tenant-a"] else None

    events = [wire_event("tenant-a") for _ in range(5)]
    produce_events(settings.kafka_bootstrap_servers, settings.kafka_topic, events)
    daemon.wait_for(lambda: published(6), WAIT_S, "a checkpoint of the quiet tree (6)")
    produce_events(settings.kafka_bootstrap_servers, settings.kafka_topic,
                   [wire_event("tenant-a") for _ in range(3)])
    daemon.wait_for(lambda: published(9), WAIT_S, "a checkpoint after it grew again (9)")
    assert daemon.stop() == 0
    assert _sink(sink)["tenant-a"] == _table(settings.database_url)["tenant-a"]
    assert _sink(sink)["tenant-a"][-1] == 9
