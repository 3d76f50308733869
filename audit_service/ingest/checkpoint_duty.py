"""The daemon's checkpoint duties beyond the batch transaction (which signs what its own
records make due): sign the trees that time made due, hand committed checkpoints to the
publisher thread, report on the sink. The poll loop calls one method per turn."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine

from audit_service.config import Settings
from audit_service.core.errors import AuditServiceError
from audit_service.ingest.checkpointing import Checkpointer, sign_grown_trees, sweep_interval_s
from audit_service.ingest.publisher import CheckpointPublisher
from audit_service.ops.metrics import ServiceMetrics
from audit_service.storage.checkpoint_sink import DirectorySink
from audit_service.storage.engine import create_db_engine
from audit_service.storage.reader import AuditReader

log = logging.getLogger(__name__)

PUBLISHER_STOP_TIMEOUT_S: Final = 5.0
"""How long a stop waits for the last checkpoints to reach the sink (the next start
publishes whatever is left)."""


class CheckpointDuty:
    """Signing on time and publishing, for a daemon whose checkpointer is set."""

    def __init__(self, settings: Settings, checkpointer: Checkpointer, metrics: ServiceMetrics):
        assert settings.checkpoint_dir is not None  # Settings require it with a key
        self.checkpointer = checkpointer
        self._metrics = metrics
        self._next_sweep = time.monotonic()
        self._engine = create_db_engine(
            settings.database_url, statement_timeout_ms=settings.statement_timeout_ms,
            pool_size=1, application_name="audit-service-publisher")
        self.publisher = CheckpointPublisher(
            AuditReader(self._engine), DirectorySink(Path(settings.checkpoint_dir)), metrics)

    def start(self) -> None:
        """Start publishing; the first pass publishes whatever an earlier run committed
        but did not get into the sink."""
        self.publisher.start()

    def committed(self, tenants: Sequence[str]) -> None:
        """A batch committed checkpoints of these tenants."""
        if tenants:
            self.publisher.notify(tenants)

    def sweep(self, engine: Engine, *, every_grown: bool = False) -> None:
        """Sign the trees that grew since a checkpoint older than checkpoint_every_s (at
        most once per sweep interval) or, with `every_grown`, every tree that grew (a clean
        stop). A failure is logged and left to the next sweep: chaining never waits."""
        now = time.monotonic()
        if not every_grown and now < self._next_sweep:
            return
        self._next_sweep = now + sweep_interval_s(self.checkpointer)
        try:
            tenants = sign_grown_trees(engine, self.checkpointer, datetime.now(UTC),
                                       every_grown=every_grown)
        except AuditServiceError as exc:
            log.warning("signing checkpoints failed, will retry", extra={"error": str(exc)})
            return
        self._metrics.count_checkpoints(len(tenants))
        self.committed(tenants)

    def ready_details(self) -> dict[str, Any]:
        """/ready's word on the sink: an unwritable sink does not stop chaining, so it does
        not make the service unready, but it must show."""
        return {"checkpoints": self.publisher.status.as_json()}

    def stop(self) -> None:
        self.publisher.stop(PUBLISHER_STOP_TIMEOUT_S)
        self._engine.dispose()
