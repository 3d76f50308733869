"""Realistic sample audit events in the exact wire format (SPEC section 2), and a producer.

The dev stack, the tests and the benchmarks need traffic that looks like the platform's:
LLM triage decisions with token counts and hashes, approvals with latencies, responses
with durations, the occasional critical injection. Generation is a pure function of a
seeded `random.Random` and a clock value, so a failing test can be replayed exactly.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from audit_service.broker.topic import produce_messages
from audit_service.core.taxonomy import EVENT_CATEGORIES, RESERVED_EVENT_TYPES

MAX_PRODUCER_LAG_MS = 250
"""Events are stamped up to this long before `now`: producers stamp, then publish."""

# Relative frequency of each event type in a small deployment's day; unlisted types are 1.
_WEIGHTS: dict[str, int] = {
    "alert.classified": 30,
    "alert.auto_closed": 12,
    "investigation.enriched": 8,
    "ioc.enriched": 8,
    "investigation.state_changed": 6,
    "alert.escalated": 4,
    "playbook.selected": 4,
    "routing.tier_selected": 4,
    "approval.requested": 3,
    "approval.granted": 3,
    "response.prepared": 3,
    "response.executed": 3,
}
_CRITICAL = frozenset(
    {"injection.detected", "injection.quarantined", "kill_switch.activated", "spend.hard_limit"}
)
_WARNING = frozenset(
    {
        "alert.escalated", "approval.timed_out", "approval.escalated", "response.rolled_back",
        "degradation.entered", "routing.provider_failover", "circuit_breaker.opened",
        "spend.soft_limit", "accumulation.threshold_breached", "technique.quarantined",
        "fp_pattern.revoked",
    }
)
_EVENT_TYPES: tuple[str, ...] = tuple(
    sorted(t for t in EVENT_CATEGORIES if t not in RESERVED_EVENT_TYPES)
)
_EVENT_WEIGHTS: tuple[int, ...] = tuple(_WEIGHTS.get(t, 1) for t in _EVENT_TYPES)

_TENANT_NAMES = (
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka",
    "tyrell", "cyberdyne", "soylent", "oscorp",
)
_ANALYSTS = ("j.doe", "a.khan", "m.rossi", "s.tanaka", "l.okafor", "e.novak")
_MODELS = (
    ("anthropic", "claude-sonnet-4-5", "tier2"),
    ("anthropic", "claude-haiku-4-5", "tier1"),
    ("openai", "gpt-4.1-mini", "tier1"),
    ("azure_openai", "gpt-4.1", "tier2"),
)
_TECHNIQUES = ("T1059.001", "T1566.002", "T1078", "T1021.001", "T1486", "T1110.003", "T1003")
_CLASSIFICATIONS = ("true_positive", "false_positive", "benign_true_positive", "suspicious")
_ACTIONS = ("isolate_host", "disable_account", "block_ip", "revoke_sessions", "quarantine_file")
_CHANNELS = ("slack", "teams", "console", "email")


def tenant_names(count: int) -> list[str]:
    """`count` readable tenant ids: tenant-acme, tenant-globex, ... then tenant-013, ..."""
    return [
        f"tenant-{_TENANT_NAMES[i]}" if i < len(_TENANT_NAMES) else f"tenant-{i + 1:03d}"
        for i in range(count)
    ]


def render_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and `Z`, as producers send it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _hash(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def _entity(rng: random.Random, domain: str) -> str:
    kind = rng.choice(("host", "user", "ip", "file"))
    if kind == "host":
        return f"host:{rng.choice(('web', 'db', 'ws', 'vpn'))}-{rng.randint(1, 40):02d}"
    if kind == "user":
        return f"user:{rng.choice(_ANALYSTS)}@{domain}"
    if kind == "ip":
        return f"ip:10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return f"file:sha256:{_hash(rng)}"


def _llm_context(rng: random.Random, template: str) -> dict[str, Any]:
    provider, model, tier = rng.choice(_MODELS)
    input_tokens = rng.randint(800, 12000)
    output_tokens = rng.randint(80, 1500)
    return {
        "llm_provider": provider,
        "llm_model_id": model,
        "llm_model_tier": tier,
        "llm_system_prompt_hash": _hash(rng),
        "llm_user_content_hash": _hash(rng),
        "llm_prompt_template_id": template,
        "llm_prompt_template_version": f"{rng.randint(1, 4)}.{rng.randint(0, 9)}.0",
        "llm_raw_response_hash": _hash(rng),
        "llm_input_tokens": input_tokens,
        "llm_output_tokens": output_tokens,
        "llm_cache_read_tokens": rng.randint(0, input_tokens),
        "llm_latency_ms": rng.randint(400, 9000),
        "llm_cost_usd": round(input_tokens * 3e-6 + output_tokens * 1.5e-5, 6),
        "llm_extended_thinking_used": rng.random() < 0.2,
    }


def _decision_event(rng: random.Random, event_type: str, domain: str) -> dict[str, Any]:
    """An agent's LLM-backed decision (triage, enrichment, playbooks, routing, CTEM)."""
    techniques = sorted(rng.sample(_TECHNIQUES, rng.randint(0, 3)))
    classification = "false_positive" if event_type == "alert.auto_closed" else (
        rng.choice(_CLASSIFICATIONS)
    )
    context = _llm_context(rng, event_type.replace(".", "_"))
    context.update(
        {
            "retrieval_stores_queried": ["incidents", "threat_intel", "runbooks"][
                : rng.randint(1, 3)
            ],
            "retrieval_results_count": rng.randint(0, 40),
            "retrieval_results_used": rng.randint(0, 8),
            "similar_incidents_found": rng.randint(0, 12),
            "fp_patterns_checked": rng.randint(0, 60),
            "techniques_identified": techniques,
            "taxonomy_version_attack": "v16.1",
        }
    )
    if event_type == "alert.auto_closed":
        context["fp_pattern_matched"] = f"fp-{rng.randint(1, 400):05d}"
    if event_type == "ctem.exposure_scored":
        context["ctem_exposures_matched"] = rng.randint(0, 9)
        context["risk_state"] = rng.choice(("low", "elevated", "high"))
        context["risk_data_freshness_hours"] = round(rng.uniform(0.1, 48.0), 2)
    if rng.random() < 0.1:
        context["agent_build"] = f"2026.11.{rng.randint(1, 30)}"  # an unknown key, kept as sent
    severity_assigned = rng.choice(("low", "medium", "high", "critical"))
    decision = {
        "decision_type": event_type.split(".", 1)[1],
        "classification": classification,
        "confidence": round(rng.uniform(0.55, 0.99), 3),
        "confidence_basis": rng.choice(("llm", "llm+fp_pattern", "llm+retrieval")),
        "severity_assigned": severity_assigned,
        "reasoning_summary": (
            f"{classification.replace('_', ' ')}: "
            f"{', '.join(techniques) or 'no ATT&CK technique'} observed; "
            f"severity {severity_assigned} from asset criticality and prior incidents"
        ),
        "recommended_actions": rng.sample(_ACTIONS, rng.randint(0, 2)),
        "alternatives_considered": rng.sample(_CLASSIFICATIONS, 2),
    }
    outcome: dict[str, Any] = {"outcome_status": "success", "duration_ms": rng.randint(500, 15000)}
    if event_type == "alert.auto_closed":
        outcome.update({"action_taken": "close_alert", "state_before": "open",
                        "state_after": "closed"})
    if event_type == "alert.escalated":
        outcome.update({"action_target": "tier2-oncall", "state_before": "triaged",
                        "state_after": "escalated"})
    if event_type == "alert.classified" and rng.random() < 0.15:
        outcome.update({
            "analyst_feedback_correct": rng.choice((True, False, None)),
            "analyst_feedback_rating": rng.choice((1, 2, 3, 4, 5, None)),
            "analyst_feedback_comment": "checked against EDR timeline",
        })
    return {
        "actor_type": "agent",
        "actor_id": "triage-agent" if event_type.startswith("alert.") else "investigation-agent",
        "actor_permissions": ["alerts:read", "alerts:classify", "investigations:write"],
        "context": context,
        "decision": decision,
        "outcome": outcome,
        "source_service": "triage-service",
    }


def _action_event(rng: random.Random, event_type: str, domain: str) -> dict[str, Any]:
    """An automated response or maintenance action and its measured outcome."""
    action = rng.choice(_ACTIONS)
    target = _entity(rng, domain)
    outcome: dict[str, Any] = {
        "outcome_status": "success" if rng.random() < 0.95 else "failed",
        "action_taken": action,
        "action_target": target,
        "duration_ms": rng.randint(50, 30000),
    }
    if outcome["outcome_status"] == "failed":
        outcome["error_details"] = "EDR API returned 503 after 3 retries"
    if event_type == "response.executed":
        outcome.update({"state_before": "online", "state_after": "contained"})
    if event_type == "response.rolled_back":
        outcome.update({"state_before": "contained", "state_after": "online"})
    scheduled = event_type in ("knowledge.indexed", "embedding.reindexed")
    context: dict[str, Any] = {}
    if event_type in ("response.generated", "ioc.enriched", "fp_pattern.created"):
        context = _llm_context(rng, event_type.replace(".", "_"))
    if event_type == "ioc.enriched":
        context["retrieval_sources"] = ["virustotal", "misp", "internal_ti"][: rng.randint(1, 3)]
    if event_type.startswith("fp_pattern."):
        context["fp_pattern_matched"] = f"fp-{rng.randint(1, 400):05d}"
    return {
        "actor_type": "scheduler" if scheduled else "agent",
        "actor_id": "nightly-indexer" if scheduled else "response-orchestrator",
        "actor_permissions": [] if scheduled else ["response:execute", "assets:read"],
        "entity_ids": [target],
        "context": context,
        "outcome": outcome,
        "source_service": "knowledge-service" if scheduled else "response-service",
    }


def _approval_event(rng: random.Random, event_type: str, domain: str) -> dict[str, Any]:
    """A human-in-the-loop approval step: who was asked, who answered, how fast, where."""
    lead = f"soc-lead@{domain}"
    outcome: dict[str, Any] = {
        "approval_requested_from": lead,
        "approval_channel": rng.choice(_CHANNELS),
    }
    actor_type, actor_id = "system", "approval-gateway"
    if event_type in ("approval.granted", "approval.denied", "fp_pattern.approved",
                      "fp_pattern.revoked", "shadow.go_live_approved"):
        actor_type, actor_id = "human", f"{rng.choice(_ANALYSTS)}@{domain}"
        outcome.update({
            "approval_received_from": actor_id,
            "approval_latency_ms": rng.randint(20_000, 3_600_000),
            "approval_comment": rng.choice(("ok, business hours", "confirmed with owner",
                                            "not without change ticket", "")),
        })
    elif event_type == "approval.timed_out":
        outcome["approval_latency_ms"] = 3_600_000
    elif event_type == "approval.requested":
        actor_type, actor_id = "agent", "response-orchestrator"
        outcome["outcome_status"] = "pending"
    return {
        "actor_type": actor_type,
        "actor_id": actor_id,
        "actor_permissions": ["approvals:decide"] if actor_type == "human" else [],
        "decision": {"recommended_actions": [rng.choice(_ACTIONS)]},
        "outcome": outcome,
        "source_service": "approval-service",
    }


def _security_event(rng: random.Random, event_type: str, domain: str) -> dict[str, Any]:
    """Guardrail hits: prompt injection, risky technique, spend limits."""
    context: dict[str, Any] = {"evidence_refs": [f"s3://evidence/{_hash(rng)[:16]}.json"]}
    decision: dict[str, Any] = {}
    outcome: dict[str, Any] = {"outcome_status": "blocked"}
    if event_type.startswith("injection.") or event_type == "technique.quarantined":
        context.update({"taxonomy_version_atlas": "v4.9", "techniques_quarantined": ["AML.T0051"]})
        decision = {
            "decision_type": "guardrail",
            "classification": "prompt_injection",
            "confidence": round(rng.uniform(0.8, 1.0), 3),
            "reasoning_summary": "alert description contains instructions addressed to the model",
        }
        outcome["action_taken"] = "quarantine_content"
    elif event_type.startswith("spend."):
        context["llm_cost_usd"] = round(rng.uniform(50.0, 500.0), 2)
        outcome["cost_incurred_usd"] = context["llm_cost_usd"]
    return {
        "actor_type": "system",
        "actor_id": "spend-governor" if event_type.startswith("spend.") else "injection-guard",
        "context": context,
        "decision": decision,
        "outcome": outcome,
        "source_service": "guardrail-service",
    }


def _system_event(rng: random.Random, event_type: str, domain: str) -> dict[str, Any]:
    """Platform state changes: degradation, kill switch, config, circuit breakers."""
    if event_type == "config.changed":
        old = rng.choice((0.90, 0.92, 0.95))
        return {
            "actor_type": "human",
            "actor_id": f"admin@{domain}",
            "actor_permissions": ["config:write"],
            "outcome": {"action_target": "triage.auto_close_threshold",
                        "state_before": str(old), "state_after": str(round(old + 0.01, 2))},
            "source_service": "config-service",
        }
    health = {"anthropic": rng.choice(("ok", "degraded")), "openai": "ok"}
    return {
        "actor_type": "system",
        "actor_id": "llm-router",
        "context": {"degradation_level": rng.choice(("none", "partial", "full")),
                    "provider_health": health},
        "outcome": {"state_before": "closed", "state_after": "open"}
        if event_type == "circuit_breaker.opened" else {},
        "source_service": "llm-router",
    }


_BUILDERS: dict[str, Callable[[random.Random, str, str], dict[str, Any]]] = {
    "decision": _decision_event,
    "action": _action_event,
    "approval": _approval_event,
    "security": _security_event,
    "system": _system_event,
}


def sample_event(tenant_id: str, rng: random.Random, now: datetime) -> dict[str, Any]:
    """One plausible event for `tenant_id`, a pure function of `rng`'s state and `now`."""
    event_type = rng.choices(_EVENT_TYPES, weights=_EVENT_WEIGHTS)[0]
    category = EVENT_CATEGORIES[event_type]
    audit_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    moment = now - timedelta(milliseconds=rng.randint(0, MAX_PRODUCER_LAG_MS))
    domain = tenant_id.removeprefix("tenant-") + ".example"
    severity = (
        "critical" if event_type in _CRITICAL else "warning" if event_type in _WARNING else "info"
    )
    event: dict[str, Any] = {
        "audit_id": audit_id,
        "tenant_id": tenant_id,
        "timestamp": render_timestamp(moment),
        "event_type": event_type,
        "event_category": category,
        "severity": severity,
    }
    body = _BUILDERS[category](rng, event_type, domain)
    event.update(body)
    if category != "system":
        event.setdefault("entity_ids", sorted({_entity(rng, domain) for _ in range(2)}))
        event["investigation_id"] = f"inv-{rng.getrandbits(48):012x}"
        event["alert_id"] = f"alert-{rng.randint(100000, 999999)}"
    event["record_version"] = "1.0"
    return event


def sample_events(
    tenants: Sequence[str], count: int, seed: int = 0, now: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """`count` events spread at random over `tenants`; the same seed and `now` replay them.

    With `now` None each event is stamped with the wall clock as it is generated, which is
    what a live stream needs (and is then not reproducible).
    """
    if not tenants:
        raise ValueError("at least one tenant is required")
    rng = random.Random(seed)
    for _ in range(count):
        tenant = rng.choice(tenants)
        yield sample_event(tenant, rng, now if now is not None else datetime.now(UTC))


def encode_event(event: dict[str, Any]) -> tuple[bytes, bytes]:
    """The Kafka message for `event`: (key = tenant_id in UTF-8, value = compact JSON)."""
    value = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return event["tenant_id"].encode("utf-8"), value.encode("utf-8")


def produce_events(bootstrap: str, topic: str, events: Iterable[dict[str, Any]]) -> int:
    """Send events keyed by tenant (acks=all), flush, and return how many were sent."""
    return produce_messages(bootstrap, topic, (encode_event(event) for event in events))
