"""Log formats: JSON lines off a terminal, key=value text on one, structured fields in both."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_service.ops.logs import configure_logging

log = logging.getLogger("audit_service.tests")

EVENT_FIELDS = {"tenant_id": "tenant-a", "audit_id": "0b7c8e1e-5a43-4d0e-9a57-3f1f0f4a0c11",
                "partition": 2, "offset": 41}


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """configure_logging replaces the root handlers; give pytest its own back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_auto_format_off_a_terminal_is_one_json_object_per_line_with_the_event_fields() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "auto", stream)

    log.warning("event rejected", extra={**EVENT_FIELDS, "kind": "json"})
    log.info("batch committed", extra={"tenants": {"b", "a"}, "offsets": {0: 5}})

    rejected, committed = _json_lines(stream)
    assert rejected["message"] == "event rejected"
    assert rejected["level"] == "WARNING"
    assert rejected["logger"] == "audit_service.tests"
    assert rejected["time"].endswith("Z")
    assert {key: rejected[key] for key in EVENT_FIELDS} == EVENT_FIELDS
    assert committed["tenants"] == ["a", "b"]
    assert committed["offsets"] == {"0": 5}


def test_json_keeps_a_traceback_on_one_line_and_renders_unknown_types_as_text() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("unexpected error", extra={"where": Path("/srv/audit")})

    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert "Traceback" in entry["exception"] and "RuntimeError: boom" in entry["exception"]
    assert entry["where"] == "/srv/audit"


def test_level_filters_and_debug_lines_are_dropped_at_info() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", "json", stream)

    log.info("not shown")
    log.warning("shown")

    assert [entry["message"] for entry in _json_lines(stream)] == ["shown"]


def _terminal_output(log_format: str) -> str:
    """What one log line looks like when the stream is a real terminal (a pty)."""
    main_fd, terminal_fd = os.openpty()
    with os.fdopen(terminal_fd, "w") as terminal:
        configure_logging("INFO", log_format, terminal)
        log.info("partitions assigned", extra={"partitions": [0, 1]})
        terminal.flush()
        output = os.read(main_fd, 4096).decode()
    os.close(main_fd)
    return output


def test_auto_format_on_a_terminal_is_readable_text_with_the_fields() -> None:
    output = _terminal_output("auto")

    assert not output.startswith("{")
    assert "INFO audit_service.tests: partitions assigned partitions=[0, 1]" in output


def test_json_can_be_forced_on_a_terminal_and_text_off_one() -> None:
    assert json.loads(_terminal_output("json"))["partitions"] == [0, 1]

    stream = io.StringIO()
    configure_logging("INFO", "text", stream)
    log.info("hello", extra={"partition": 3})
    assert stream.getvalue().rstrip().endswith("hello partition=3")
