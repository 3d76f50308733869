"""What crosses the pipe to and from the validation worker (validation_pool) must come out
as `prepare_batch` would have made it in line: every PendingRecord text for text, every
rejection with its kind, reason and ids. The worker's task runs here in process; its
arguments and result go through pickle as they would between the processes.
(tests/integration/ingest/test_validation_paths.py runs the real worker in the daemon.)
"""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta

from audit_service.core.events import EventRejected, ValidationLimits
from audit_service.core.linking import PendingRecord
from audit_service.core.messages import ConsumedMessage
from audit_service.dev.samples import sample_events
from audit_service.ingest import validation_pool
from audit_service.ingest.batch import prepare_batch

NOW = datetime(2026, 11, 26, 16, 0, tzinfo=UTC)
LIMITS = ValidationLimits()


def _messages() -> list[ConsumedMessage]:
    events = sample_events(["tenant-a", "tenant-b"], 30, now=NOW - timedelta(minutes=5))
    messages = [
        ConsumedMessage("audit.events", index % 4, index, event["tenant_id"].encode(),
                        json.dumps(event).encode(), 1_700_000_000_000)
        for index, event in enumerate(events)
    ]
    bad = [b"{", b'{"audit_id": "\\u0000"}', None, json.dumps({"a": 1}).encode()]
    return messages + [ConsumedMessage("audit.events", 0, 100 + index, b"tenant-a", value)
                       for index, value in enumerate(bad)]


def _through_the_pipe(messages: list[ConsumedMessage]) -> list[PendingRecord | EventRejected]:
    outgoing = pickle.dumps(validation_pool._to_worker(messages), pickle.HIGHEST_PROTOCOL)
    returned = pickle.dumps(validation_pool._validate(pickle.loads(outgoing), LIMITS, NOW),
                            pickle.HIGHEST_PROTOCOL)
    return validation_pool._from_worker(pickle.loads(returned))


def _comparable(result: PendingRecord | EventRejected) -> object:
    if isinstance(result, EventRejected):
        return result.kind, result.reason, result.tenant_id, result.audit_id
    return result


def test_the_worker_returns_what_prepare_batch_makes_in_line() -> None:
    messages = _messages()
    in_line = prepare_batch(messages, LIMITS, NOW).parsed
    through = _through_the_pipe(messages)
    assert [_comparable(r) for r in through] == [_comparable(r) for r in in_line]
    assert all(type(r) in (PendingRecord, EventRejected) for r in through)
    assert sum(isinstance(r, PendingRecord) for r in through) == 30
    assert sum(isinstance(r, EventRejected) for r in through) == 4
