"""Publishing committed checkpoints to the sink: in order, each exactly once, never lost.

A checkpoint is committed with its records first (batch, checkpointing); this thread then
copies whatever `audit_checkpoints` holds beyond each tenant's newest line in the sink. The
sink's own last line is the only bookmark, so nothing is lost when the sink is unwritable
for a while (the tenants stay pending and are retried every RETRY_S while chaining goes
on) or when the process dies between the commit and the append (the first pass after a
start compares every tenant that has checkpoints).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from audit_service.core.errors import AuditServiceError
from audit_service.ops.metrics import ServiceMetrics
from audit_service.storage.checkpoint_sink import CheckpointSink, publish_missing
from audit_service.storage.reader import AuditReader

log = logging.getLogger(__name__)

RETRY_S: Final = 5.0
"""Pause before publishing again after the sink or the database failed."""
CATCH_UP_S: Final = 60.0
"""How often a quiet publisher compares every tenant's checkpoints with the sink anyway:
a commit that succeeded but reported a failure (the connection dropped during COMMIT) is
retried as "already committed", and its checkpoints are then never notified."""


@dataclass
class PublisherStatus:
    """What /ready and /metrics say about the sink."""

    pending: int = 0
    """Checkpoints committed to the database but not yet in the sink (as last counted)."""
    last_published: datetime | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"pending": self.pending, "error": self.error,
                "last_published": self.last_published.isoformat()
                if self.last_published else None}


class CheckpointPublisher:
    """A thread that appends committed checkpoints to the sink."""

    def __init__(self, reader: AuditReader, sink: CheckpointSink, metrics: ServiceMetrics,
                 retry_s: float = RETRY_S):
        self.reader = reader
        self._sink = sink
        self._metrics = metrics
        self._retry_s = retry_s
        self._changed = threading.Condition()
        self._pending: set[str] = set()
        self._catch_up = True
        self._stopping = False
        self._notified = 0
        """Checkpoints notified so far: those notified during a pass are still pending."""
        self._notified_at_start = 0
        self.status = PublisherStatus()
        self._thread = threading.Thread(target=self._run, name="checkpoint-publisher",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self, tenants: Sequence[str]) -> None:
        """These tenants have one new committed checkpoint each."""
        with self._changed:
            self._pending.update(tenants)
            self._notified += len(tenants)
            self._set_status(replace(self.status, pending=self.status.pending + len(tenants)))
            self._changed.notify()

    def stop(self, timeout_s: float) -> None:
        """Publish what is pending (one last try), then end the thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive() or self.status.pending:
            log.warning("stopping with checkpoints not yet in the sink; the next start "
                        "publishes them", extra={"pending": self.status.pending})

    def _run(self) -> None:
        try:
            self._publish_until_stopped()
        except Exception as exc:  # a bug: say so loudly, /ready shows it until a restart
            log.exception("the checkpoint publisher stopped; checkpoints are no longer "
                          "published until the service restarts")
            with self._changed:
                self._set_status(replace(self.status, error=f"publisher stopped: {exc}"))

    def _publish_until_stopped(self) -> None:
        failed = False
        while True:
            with self._changed:
                if failed:  # retry after a pause, whatever was notified meanwhile
                    self._changed.wait_for(lambda: self._stopping, timeout=self._retry_s)
                elif not self._changed.wait_for(
                        lambda: self._stopping or bool(self._pending) or self._catch_up,
                        timeout=CATCH_UP_S):
                    self._catch_up = True
                tenants, self._pending = self._pending, set()
                catch_up, stopping = self._catch_up, self._stopping
                self._notified_at_start = self._notified
            failed = not self._publish(tenants, catch_up)
            if stopping:
                return

    def _publish(self, tenants: set[str], catch_up: bool) -> bool:
        """One pass; False (and the tenants pending again) when something failed."""
        try:
            if catch_up:
                tenants |= set(self.reader.checkpoint_sizes())
            publication = publish_missing(self.reader, self._sink, tenants)
        except AuditServiceError as exc:
            return self._failed(tenants, str(exc), pending=None)
        if publication.failures:
            error = next(iter(publication.failures.values()))
            return self._failed(set(publication.failures), error, pending=publication.left)
        with self._changed:
            self._catch_up = False
            if self.status.error is not None:
                log.info("the checkpoint sink works again: every pending checkpoint is "
                         "published", extra={"checkpoints": publication.appended})
            self._set_status(PublisherStatus(self._notified_since_start(), datetime.now(UTC)))
        self._metrics.checkpoints_published(publication.appended, time.time())
        return True

    def _failed(self, tenants: set[str], error: str, pending: int | None) -> bool:
        with self._changed:
            self._pending |= tenants
            count = self.status.pending if pending is None else (
                pending + self._notified_since_start())
            count = max(count, len(tenants))  # each failed tenant has one or more
            if self.status.error != error:
                log.error("cannot publish checkpoints to the sink; chaining goes on, they are "
                          "retried", extra={"error": error, "pending": count,
                                            "retry_in_s": self._retry_s})
            self._set_status(PublisherStatus(count, self.status.last_published, error))
        return False

    def _notified_since_start(self) -> int:
        return self._notified - self._notified_at_start

    def _set_status(self, status: PublisherStatus) -> None:
        """Replace the status (callers hold the lock) and the pending gauge with it."""
        self.status = status
        self._metrics.checkpoints_pending.set(status.pending)
