"""Test vectors for the record hash (tests/vectors/), checked three independent ways.

1. The writer (`chain.py`) still produces exactly these lines, so the definition cannot
   drift unnoticed.
2. The project's offline verifier accepts them, anchored at both ends.
3. A re-implementation written here from docs/hash-chain.md alone, and the two verifier
   programs printed in that document (Python, and Node.js when `node` is installed), agree.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from audit_service.auditing.export_verify import export_line, verify_export_file
from audit_service.core.chain import (
    GENESIS_PREVIOUS_HASH,
    ChainHead,
    advance,
    chain_event,
    genesis_record,
    jsonb_stable,
)

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "tests" / "vectors" / "chain.jsonl"
HASH_DOC = ROOT / "docs" / "hash-chain.md"
TENANT = "tenant-vectors"
START = datetime(2026, 1, 1, tzinfo=UTC)
SUBPROCESS_TIMEOUT_S = 30

TRICKY_VALUES: list[dict[str, Any]] = [
    {"actor_id": "analyst-1", "context": {"llm_provider": "anthropic", "llm_input_tokens": 1200}},
    {   # non-ASCII, emoji (astral plane: a surrogate pair in the hash input), non-ASCII keys
        "actor_id": "analyste-é",
        "entity_ids": ["host:ü", "user:日本語"],
        "context": {"llm_provider": "Ünïcødé – 日本語", "note": "emoji 😀🔐 astral 𝔘",  # noqa: RUF001
                    "ключ": "значение"},
    },
    {   # floats as Python prints them, and the JSONB-stable form of the awkward ones
        "context": jsonb_stable({
            "f_tenth": 0.1, "f_small": 1e-07, "f_smaller": 1.5e-05,
            "f_sum": 0.30000000000000004, "f_denormal": 5e-324, "f_one": 1.0, "f_neg": -2.5,
            "f_negative_zero": -0.0, "f_exp16": 1e16, "f_big": 1.5e300,
        }),
        "decision": {"confidence": 0.875},
    },
    {   # integers beyond 64 bits and beyond a double's exact range
        "context": {"i_2_53_plus_1": 2**53 + 1, "i_2_70": 2**70, "i_negative": -(2**64),
                    "i_zero": 0},
        "outcome": {"duration_ms": 0, "analyst_feedback_rating": None},
    },
    {   # empty strings, null, empty containers: all distinct
        "investigation_id": "", "alert_id": "", "actor_permissions": [], "entity_ids": ["", ""],
        "context": {"empty": "", "nothing": None, "list": [], "object": {}},
    },
    {   # nesting, list order kept, key order by code point at every depth
        "context": {
            "nested": {"b": [3, 1, 2], "a": {"deep": [{"z": 1, "y": [True, False, None]}]}},
            "Z": 1, "a": 2, "_": 3, "~": 4, "\ufffd": "U+FFFD",
            "😀": "sorts after U+FFFD by code point (before it in UTF-16 order)",
        },
        "decision": {"recommended_actions": ["b", "a", "b"]},
    },
    {   # escapes: quote, backslash, control characters, DEL, separators, slash
        "context": {"quote\"and\\backslash": "tab\tnewline\ncr\rbell\u0007",
                    "del": "\u007f", "line_separators": "\u2028 \u2029", "slash": "a/b"},
    },
    {
        "severity": "critical", "actor_type": "human", "event_type": "approval.granted",
        "event_category": "approval",
        "timestamp": "2026-11-26T16:19:16.123000Z",  # an event time in milliseconds
        "outcome": {"approval_received_from": "j.doe", "approval_latency_ms": 93000},
    },
]


def vector_records() -> list[dict[str, Any]]:
    """The vector chain, built by the writer's own functions (what `chain.py` would store)."""
    records = [genesis_record(TENANT, START)]
    head = advance(ChainHead.empty(TENANT), records[0])
    for n, overrides in enumerate(TRICKY_VALUES, start=1):
        moment = START + timedelta(minutes=n, microseconds=n)
        event: dict[str, Any] = {
            "audit_id": f"00000000-0000-4000-8000-{n:012d}", "tenant_id": TENANT,
            "timestamp": moment.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "event_type": "alert.classified", "event_category": "decision",
            "severity": "info", "actor_type": "agent", "actor_id": "triage-agent",
            "actor_permissions": ["alerts:read"], "investigation_id": f"inv-{n}",
            "alert_id": f"alert-{n}", "entity_ids": [f"host-{n}"], "context": {},
            "decision": {}, "outcome": {}, "source_service": "vectors", "record_version": "1.0",
        }
        event.update(overrides)
        record = chain_event(head, event, moment + timedelta(milliseconds=5))
        records.append(record)
        head = advance(head, record)
    return records


def _head() -> str:
    return json.loads(VECTORS.read_text().splitlines()[-1])["record_hash"]


def test_the_writer_still_produces_the_vectors() -> None:
    expected = "".join(export_line(record) for record in vector_records())
    assert VECTORS.read_text(encoding="ascii") == expected, (
        "chain.py now hashes or renders a record differently from tests/vectors/chain.jsonl"
    )


def test_vectors_cover_the_tricky_renderings() -> None:
    text = VECTORS.read_text(encoding="ascii")
    for rendering in ['\\ud83d\\ude00', '\\u00e9', '"f_small":1e-07', '"f_smaller":1.5e-05',
                      '"f_exp16":10000000000000000', '"f_negative_zero":0.0',
                      '"i_2_70":1180591620717411303424', '"\\u007f"', '"nothing":null',
                      '"\\ufffd":"U+FFFD","\\ud83d\\ude00"', 'tab\\tnewline\\ncr\\rbell\\u0007"']:
        assert rendering in text, rendering


def test_the_project_verifier_accepts_the_vectors_anchored_at_both_ends() -> None:
    result = verify_export_file(
        str(VECTORS), expect_previous=GENESIS_PREVIOUS_HASH, expect_head=_head()
    )
    assert result.valid, result.first_break
    assert (result.records_checked, result.first_sequence, result.last_sequence) == (9, 0, 8)


def _verify_as_documented(lines: list[bytes]) -> str:
    """Written from docs/hash-chain.md only: parse, drop record_hash, re-serialise, hash."""
    previous, sequence = GENESIS_PREVIOUS_HASH, -1
    for line in lines:
        record = json.loads(line)
        claimed = record.pop("record_hash")
        hashed = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        assert hashlib.sha256(hashed.encode("utf-8")).hexdigest() == claimed
        assert record["sequence_number"] == sequence + 1
        assert record["previous_hash"] == previous
        if sequence == -1:
            assert record["audit_id"] == "00000000-0000-0000-0000-000000000000"
            assert record["event_type"] == "system.genesis"
        previous, sequence = claimed, record["sequence_number"]
    return previous


def test_an_independent_reimplementation_agrees() -> None:
    assert _verify_as_documented(VECTORS.read_bytes().splitlines()) == _head()


def test_the_hash_input_is_the_line_without_its_record_hash_member() -> None:
    for line in VECTORS.read_bytes().splitlines():
        claimed = json.loads(line)["record_hash"]
        hashed = line.replace(b'"record_hash":"%s",' % claimed.encode(), b"")
        assert hashlib.sha256(hashed).hexdigest() == claimed


def _documented_program(marker: str) -> str:
    """The fenced code block in docs/hash-chain.md whose first line names `marker`."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", HASH_DOC.read_text(), flags=re.S):
        if block.splitlines()[0].find(marker) >= 0:
            return block
    raise AssertionError(f"no code block starting with {marker!r} in {HASH_DOC}")


def _tampered(tmp_path: Path) -> Path:
    lines = VECTORS.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace("10000000000000000", "10000000000000001")
    path = tmp_path / "tampered.jsonl"
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize(("interpreter", "marker"), [
    (sys.executable, "verify_export.py"),
    ("node", "verify_export.js"),
])
def test_the_documented_programs_verify_the_vectors(
    tmp_path: Path, interpreter: str, marker: str
) -> None:
    executable = shutil.which(interpreter)
    if executable is None:
        pytest.skip(f"{interpreter} is not installed")
    program = tmp_path / marker
    program.write_text(_documented_program(marker))

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([executable, str(program), str(path), _head()],
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)

    intact = run(VECTORS)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert _head() in intact.stdout
    broken = run(_tampered(tmp_path))
    assert broken.returncode != 0
    assert "line 4" in broken.stdout + broken.stderr
