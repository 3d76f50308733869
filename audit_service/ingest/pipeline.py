"""The batches in flight between the poll loop and PostgreSQL, and the order they commit in.

Contract (what lets three batches overlap without weakening SPEC section 5):
- A submitted batch is validated by the ValidationPool, then committed by ONE committer
  thread; batch k's transaction starts only once batch k-1 is committed (CommitOrder), by
  the committer or by the loop retrying it, so transactions run one at a time in poll order.
- `finish_oldest` hands batches back strictly in poll order and only once their database
  transaction has committed: the caller commits their offsets to Kafka after that, never
  before.
- A transient failure of batch k is retried by the caller (`retry`) while k+1.. wait for
  their turn; when the caller gives up (a stop request), every waiting batch is abandoned,
  uncommitted, and consumed again on the next start.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

from audit_service.core.errors import TransientError
from audit_service.core.messages import ConsumedMessage
from audit_service.core.outcomes import BatchOutcome
from audit_service.ingest.batch import PreparedBatch
from audit_service.ingest.validation_pool import ValidationPool

MAX_BATCHES_IN_FLIGHT = 2
"""Polled but not yet acknowledged, beyond the one being polled: one committing, one being
validated. More would only queue (commits are sequential) and hold more memory."""

Commit = Callable[[PreparedBatch], BatchOutcome]
Retry = Callable[[PreparedBatch, TransientError], BatchOutcome | None]
"""Commits a batch whose first attempt failed; None when it gave up (a stop request)."""


@dataclass
class InFlight:
    """A polled batch on its way: validating (worker), then committing (committer thread)."""

    number: int
    messages: Sequence[ConsumedMessage]
    prepared: Future[PreparedBatch]
    result: Future[BatchOutcome]


class EarlierBatchFailed(Exception):
    """A batch was not attempted because the loop gave up on an earlier one (stop request
    or fatal error): it is consumed again on the next start."""


class CommitOrder:
    """Lets the committer thread commit batch k only once batch k-1 is committed, by the
    committer or by the loop retrying it, so batches always commit in poll order."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._committed = 0
        self._abandoned = False

    def wait_turn(self, number: int) -> bool:
        """Block until batch `number` may commit; False if the loop gave up first."""
        with self._changed:
            self._changed.wait_for(lambda: self._committed >= number - 1 or self._abandoned)
            return not self._abandoned

    def committed(self, number: int) -> None:
        with self._changed:
            self._committed = max(self._committed, number)
            self._changed.notify_all()

    def abandon(self) -> None:
        """No batch waiting for its turn will commit (the loop is leaving)."""
        with self._changed:
            self._abandoned = True
            self._changed.notify_all()


class BatchPipeline:
    """Batches submitted by the poll loop, validated and committed behind it, handed back in
    poll order. Use as a context manager: leaving it abandons whatever did not commit."""

    def __init__(self, pool: ValidationPool, commit: Commit,
                 max_in_flight: int = MAX_BATCHES_IN_FLIGHT):
        self._pool = pool
        self._commit = commit
        self._max_in_flight = max_in_flight
        self._order = CommitOrder()
        self._in_flight: deque[InFlight] = deque()
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="committer")
        self.submitted = 0

    def __enter__(self) -> BatchPipeline:
        return self

    def __exit__(self, _type: type[BaseException] | None, _value: BaseException | None,
                 _traceback: TracebackType | None) -> None:
        self._order.abandon()
        self._committer.shutdown(wait=True)

    def __len__(self) -> int:
        return len(self._in_flight)

    def submit(self, messages: Sequence[ConsumedMessage]) -> None:
        """Validate `messages` in the pool, then commit them in their turn."""
        self.submitted += 1
        prepared = self._pool.submit(messages, datetime.now(UTC))
        result = self._committer.submit(self._commit_in_turn, self.submitted, prepared)
        self._in_flight.append(InFlight(self.submitted, messages, prepared, result))

    def oldest_due(self) -> bool:
        """True when the oldest batch should be acknowledged now: it has finished, or the
        pipeline is full."""
        return bool(self._in_flight) and (
            len(self._in_flight) > self._max_in_flight or self._in_flight[0].result.done())

    def finish_oldest(self, retry: Retry) -> tuple[Sequence[ConsumedMessage], BatchOutcome] | None:
        """Wait for the oldest batch's commit (retrying it through `retry` if it failed
        transiently); its messages and outcome, or None when it was not committed."""
        in_flight = self._in_flight.popleft()
        try:
            return in_flight.messages, in_flight.result.result()
        except TransientError as exc:
            outcome = retry(in_flight.prepared.result(), exc)
            if outcome is None:
                return None
            self._order.committed(in_flight.number)
            return in_flight.messages, outcome

    def _commit_in_turn(self, number: int, prepared: Future[PreparedBatch]) -> BatchOutcome:
        """Committer thread: commit batch `number` once validated and once the batch before
        it is committed (if that one failed, the loop retries it first)."""
        batch = prepared.result()
        if not self._order.wait_turn(number):
            raise EarlierBatchFailed
        outcome = self._commit(batch)
        self._order.committed(number)
        return outcome
