"""The pydantic v2 schema of an audit event on the wire (SPEC section 2).

Strict everywhere: a typo or a wrong type must be rejected, never coerced, because the
stored record is evidence. The nested objects only type-check the fields we know; unknown
nested keys are kept as sent.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, with_config
from typing_extensions import TypedDict

from audit_service.core.chain import TENANT_ID_PATTERN

_NESTED = ConfigDict(extra="allow", strict=True)
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""The form audit_id is stored in (use with fullmatch); other UUID spellings are normalised."""


@with_config(_NESTED)
class ContextFields(TypedDict, total=False):
    """Known `context` keys and their types."""

    llm_provider: str
    llm_model_id: str
    llm_model_tier: str
    llm_system_prompt_hash: str
    llm_user_content_hash: str
    llm_prompt_template_id: str
    llm_prompt_template_version: str
    llm_raw_response_hash: str
    llm_tool_use_schema: str
    taxonomy_version_attack: str
    taxonomy_version_atlas: str
    risk_state: str
    fp_pattern_matched: str
    degradation_level: str
    llm_input_tokens: int
    llm_output_tokens: int
    llm_cache_read_tokens: int
    llm_cache_write_tokens: int
    llm_latency_ms: int
    retrieval_results_count: int
    retrieval_results_used: int
    retrieval_token_budget: int
    retrieval_token_used: int
    ctem_exposures_matched: int
    similar_incidents_found: int
    fp_patterns_checked: int
    llm_cost_usd: float
    risk_data_freshness_hours: float
    llm_extended_thinking_used: bool
    retrieval_stores_queried: list[str]
    retrieval_query_hashes: list[str]
    retrieval_sources: list[str]
    techniques_identified: list[str]
    techniques_validated: list[str]
    techniques_quarantined: list[str]
    evidence_refs: list[str]
    provider_health: dict[str, Any]


@with_config(_NESTED)
class DecisionFields(TypedDict, total=False):
    """Known `decision` keys and their types."""

    decision_type: str
    classification: str
    confidence_basis: str
    severity_assigned: str
    reasoning_summary: str
    confidence: Annotated[float, Field(ge=0.0, le=1.0)]
    recommended_actions: list[str]
    constraints_applied: list[str]
    alternatives_considered: list[str]


@with_config(_NESTED)
class OutcomeFields(TypedDict, total=False):
    """Known `outcome` keys and their types."""

    outcome_status: str
    action_taken: str
    action_target: str
    error_details: str
    state_before: str
    state_after: str
    approval_requested_from: str
    approval_received_from: str
    approval_channel: str
    approval_comment: str
    analyst_feedback_comment: str
    analyst_feedback_timestamp: str
    duration_ms: int
    approval_latency_ms: int
    cost_incurred_usd: float
    analyst_feedback_correct: bool | None
    analyst_feedback_rating: Annotated[int, Field(ge=1, le=5)] | None


class WireEvent(BaseModel):
    """One event exactly as a producer may send it; unknown top-level fields are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)

    audit_id: str
    tenant_id: str = Field(pattern=TENANT_ID_PATTERN)
    timestamp: str
    event_type: str
    event_category: str | None = None
    severity: Literal["info", "warning", "critical"] = "info"
    actor_type: Literal["agent", "human", "system", "scheduler"]
    actor_id: str = Field(min_length=1)
    actor_permissions: list[str] = Field(default_factory=list)
    investigation_id: str = ""
    alert_id: str = ""
    entity_ids: list[str] = Field(default_factory=list)
    context: dict[str, Any] = Field(default_factory=dict)
    decision: dict[str, Any] = Field(default_factory=dict)
    outcome: dict[str, Any] = Field(default_factory=dict)
    source_service: str = ""
    record_version: str = Field("1.0", min_length=1)

    @field_validator("audit_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if CANONICAL_UUID.fullmatch(value):
            return value
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError("must be a UUID") from None


NESTED_SCHEMAS: dict[str, TypeAdapter[Any]] = {
    "context": TypeAdapter(ContextFields),
    "decision": TypeAdapter(DecisionFields),
    "outcome": TypeAdapter(OutcomeFields),
}
"""Validators for the known keys of each nested object, applied to the object as sent."""
