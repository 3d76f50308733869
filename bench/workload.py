"""The benchmark workload: ~800-byte wire-format events, reproducible, for any number of
tenants (round robin, so with many tenants nearly every event of a batch is another
tenant's)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

DEFAULT_TENANTS = 20


def tenant_name(index: int, tenants: int = DEFAULT_TENANTS) -> str:
    """The tenant of event `index`: `tenant-00` .. `tenant-19` with the default 20."""
    width = max(2, len(str(tenants - 1)))
    return f"tenant-{index % tenants:0{width}d}"


def wire_event(index: int, moment: datetime, tenants: int = DEFAULT_TENANTS) -> dict:
    """A realistic alert.classified event of about 800 bytes once encoded."""
    return {
        "audit_id": str(uuid.UUID(int=index + 1, version=4)),
        "tenant_id": tenant_name(index, tenants),
        "timestamp": moment.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "event_type": "alert.classified",
        "severity": "warning" if index % 7 == 0 else "info",
        "actor_type": "agent",
        "actor_id": "triage-agent-v3",
        "actor_permissions": ["alerts:read", "alerts:classify"],
        "investigation_id": f"inv-{index // 10:08d}",
        "alert_id": f"alert-{index:09d}",
        "entity_ids": [f"host:web-{index % 97:02d}", f"user:u{index % 1013}@corp.example"],
        "context": {
            "llm_provider": "anthropic", "llm_model_id": "claude-sonnet",
            "llm_input_tokens": 1500 + index % 900, "llm_output_tokens": 210 + index % 77,
            "llm_latency_ms": 800 + index % 1200, "llm_cost_usd": 0.0042,
            "techniques_identified": ["T1078", "T1110.003"],
        },
        "decision": {
            "decision_type": "classification", "classification": "true_positive",
            "confidence": 0.87,
            "recommended_actions": ["isolate_host", "reset_credentials"],
        },
        "outcome": {"outcome_status": "success", "duration_ms": 1234},
        "source_service": "triage-service",
    }


def encoded_events(
    count: int, start: int = 0, tenants: int = DEFAULT_TENANTS
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) messages; timestamps are the time of generation."""
    for index in range(start, start + count):
        event = wire_event(index, datetime.now(UTC), tenants)
        yield event["tenant_id"].encode(), json.dumps(event, separators=(",", ":")).encode()
