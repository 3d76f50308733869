"""The audit event taxonomy: every accepted event_type and the category it belongs to."""

from typing import Final

GENESIS_EVENT_TYPE: Final = "system.genesis"

_TAXONOMY: Final[dict[str, tuple[str, ...]]] = {
    "decision": (
        "alert.classified", "alert.auto_closed", "alert.escalated", "alert.short_circuited",
        "investigation.state_changed", "investigation.enriched", "playbook.selected",
        "playbook.generated", "ctem.exposure_scored", "atlas.detection_fired",
        "routing.tier_selected", "routing.provider_failover",
    ),
    "action": (
        "response.prepared", "response.executed", "response.rolled_back", "response.generated",
        "ioc.enriched", "fp_pattern.created", "fp_pattern.activated",
        "ctem.remediation_assigned", "ctem.remediation_verified", "knowledge.indexed",
        "embedding.reindexed",
    ),
    "approval": (
        "approval.requested", "approval.granted", "approval.denied", "approval.timed_out",
        "approval.escalated", "fp_pattern.approved", "fp_pattern.revoked",
        "shadow.go_live_approved",
    ),
    "security": (
        "injection.detected", "injection.quarantined", "technique.quarantined",
        "accumulation.threshold_breached", "spend.soft_limit", "spend.hard_limit",
    ),
    "system": (
        "degradation.entered", "degradation.exited", "kill_switch.activated",
        "kill_switch.deactivated", "config.changed", "circuit_breaker.opened",
        "circuit_breaker.closed", GENESIS_EVENT_TYPE,
    ),
}

EVENT_CATEGORIES: Final[dict[str, str]] = {
    event_type: category for category, types in _TAXONOMY.items() for event_type in types
}
"""event_type -> event_category, including the reserved genesis type."""

RESERVED_EVENT_TYPES: Final = frozenset({GENESIS_EVENT_TYPE})
"""Types only the service itself may write; a producer sending one is rejected."""

SEVERITIES: Final = ("info", "warning", "critical")
ACTOR_TYPES: Final = ("agent", "human", "system", "scheduler")
