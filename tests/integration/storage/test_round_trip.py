"""Tricky values survive the trip through Kafka, JSONB and back: hashes still verify, and
reconcile finds the stored record to be the message's content."""

from __future__ import annotations

from click.testing import CliRunner
from support import chain_of, produce_events, run_until_idle, wire_event

from audit_service.cli import main
from audit_service.config import Settings
from audit_service.core.chain import compute_record_hash, jsonb_stable, verify_chain

TRICKY_CONTEXT = {
    "llm_provider": "Ünïcødé – 日本語 – emoji 😀🔐 – astral 𝔘",  # noqa: RUF001 (on purpose)
    "llm_input_tokens": 2**53 + 1,
    "llm_cost_usd": 0.1,
    "risk_data_freshness_hours": 1e-7,
    "huge_int": 2**70,
    "negative_zero": -0.0,
    "large_float": 1e300,
    "exp_float": 1.5e16,
    "tiny_float": 5e-324,
    "one_point_zero": 1.0,
    "empty": "",
    "nothing": None,
    "nested": {"b": [3, 1, 2], "a": {"deep": [{"z": 1, "y": [True, False, None]}]}},
    "evidence_refs": ["z", "a", "m", ""],
    "quote\"and\\backslash": "tab\tnewline\nbell\u0007",
}


def test_tricky_values_verify_after_being_read_back_from_postgresql(
    settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    event = wire_event(
        "tenant-tricky",
        context=TRICKY_CONTEXT,
        decision={"confidence": 0.30000000000000004, "recommended_actions": ["b", "a"]},
        outcome={"analyst_feedback_correct": None, "cost_incurred_usd": 12345678.9},
        actor_permissions=["write", "", "read", "write"],
        entity_ids=["ip:10.0.0.1", "host:ü"],
        investigation_id="",
        alert_id="Ålert-1",
    )
    produce_events(kafka_bootstrap, topic, [event])

    run_until_idle(settings)

    genesis, record = chain_of(settings.database_url, "tenant-tricky")
    assert record["context"] == jsonb_stable(TRICKY_CONTEXT)
    assert record["context"]["huge_int"] == 2**70
    assert record["context"]["large_float"] == 10**300
    assert repr(record["context"]["risk_data_freshness_hours"]) == "1e-07"
    assert record["actor_permissions"] == ["write", "", "read", "write"]
    assert record["decision"]["recommended_actions"] == ["b", "a"]
    assert record["record_hash"] == compute_record_hash(record)
    assert verify_chain("tenant-tricky", [genesis, record]).valid

    # reconcile reads the same record another way and must find it the message's content.
    reconcile = CliRunner().invoke(main, ["reconcile"], env={
        "AUDIT_DATABASE_URL": settings.database_url,
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "AUDIT_KAFKA_TOPIC": topic,
        "AUDIT_CONSUMER_GROUP": settings.consumer_group})
    assert reconcile.exit_code == 0, reconcile.output
