"""EventRejected crosses a process boundary: the validation worker returns rejections to the
daemon pickled, and the daemon stores their reason and ids and counts them by `kind`. A
rejection that loses any of them on the way (or cannot be unpickled at all) would break the
worker path only, so the in-thread path could not catch it."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest

from audit_service.core.events import REJECTION_KINDS, EventRejected, ValidationLimits, parse_event

NOW = datetime(2026, 11, 26, 16, 19, 16, 123456, tzinfo=UTC)
TENANT = "tenant-acme"
AUDIT_ID = "0e1f2a3b-4c5d-6e7f-8091-a2b3c4d5e6f7"


def _event(**changes: Any) -> bytes:
    event = {
        "audit_id": AUDIT_ID, "tenant_id": TENANT, "timestamp": "2026-11-26T16:19:16.123Z",
        "event_type": "alert.classified", "actor_type": "agent", "actor_id": "triage-agent",
    }
    return json.dumps(event | changes).encode()


def _rejection(key: bytes | None, value: bytes | None) -> EventRejected:
    """A real rejection, as the validator raises it."""
    with pytest.raises(EventRejected) as caught:
        parse_event(key, value, ValidationLimits(), NOW)
    return caught.value


@pytest.mark.parametrize(
    ("key", "value", "kind", "ids"),
    [
        (TENANT.encode(), _event(event_type="alert.unknown"), "taxonomy", (TENANT, AUDIT_ID)),
        (TENANT.encode(), b'{"audit_id": ', "json", (None, None)),
        (b"tenant-globex", _event(), "key_mismatch", (TENANT, AUDIT_ID)),
        (TENANT.encode(), None, "tombstone", (None, None)),
    ],
    ids=["unknown-event-type", "malformed-json", "key-mismatch", "tombstone"],
)
def test_a_rejection_survives_pickling_with_reason_kind_and_ids(
    key: bytes | None, value: bytes | None, kind: str, ids: tuple[str | None, str | None]
) -> None:
    original = _rejection(key, value)
    assert (original.kind, (original.tenant_id, original.audit_id)) == (kind, ids)

    copy = pickle.loads(pickle.dumps(original, protocol=pickle.HIGHEST_PROTOCOL))

    assert type(copy) is EventRejected
    assert copy.kind == kind and copy.kind in REJECTION_KINDS
    assert copy.reason == original.reason and str(copy) == str(original)
    assert (copy.tenant_id, copy.audit_id) == ids
    assert copy.args == original.args


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_keeps_the_kind(protocol: int) -> None:
    # multiprocessing uses the default protocol today; any other must not lose `kind` either.
    original = _rejection(TENANT.encode(), _event(event_type="alert.unknown"))
    copy = pickle.loads(pickle.dumps(original, protocol=protocol))
    assert (copy.reason, copy.kind, copy.tenant_id, copy.audit_id) == (
        original.reason, "taxonomy", TENANT, AUDIT_ID)
