"""Where a partition resumes when the broker's log and the stored offsets disagree
(offset_policy), and the two settings that steer it (pure code: no broker, no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit_service.config import load_settings
from audit_service.core.errors import ConfigurationError
from audit_service.core.offset_policy import (
    LogRange,
    OffsetOutOfRange,
    StartingPoint,
    TopicLog,
    plan_starting_points,
)

TOPIC = "audit.events"


@pytest.fixture(autouse=True)
def _no_default_ini(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the environment given, not from a ./audit.ini."""
    monkeypatch.chdir(tmp_path)


def _log(*ranges: tuple[int, int], topic_id: str | None = "id-1") -> TopicLog:
    return TopicLog(topic_id, {p: LogRange(*r) for p, r in enumerate(ranges)})


@pytest.mark.parametrize("policy", ["fail", "earliest", "latest"])
def test_offsets_inside_the_log_are_kept_and_new_partitions_start_at_its_beginning(
    policy: str,
) -> None:
    log = _log((0, 10), (5, 10), (0, 0), (3, 9))

    points = plan_starting_points(TOPIC, {0: 10, 1: 5, 2: 0}, log, policy, "id-1")

    assert points == {0: StartingPoint(10), 1: StartingPoint(5), 2: StartingPoint(0),
                      3: StartingPoint(3)}


def test_fail_names_every_partition_outside_its_log_in_one_line() -> None:
    log = _log((0, 100), (0, 100), (500, 900))

    with pytest.raises(OffsetOutOfRange) as raised:
        plan_starting_points(TOPIC, {0: 250, 1: 50, 2: 10}, log, "fail")

    message = str(raised.value)
    assert "\n" not in message
    assert "partition 0: stored offset 250 is beyond the end of the broker's log [0, 100)" \
        in message
    assert "partition 1" not in message
    assert "partition 2: stored offset 10 is before the start of the broker's log [500, 900)" \
        in message
    assert "on_offset_out_of_range = earliest or latest" in message
    assert "move the stored offsets" not in message  # a new process sees these too


@pytest.mark.parametrize(("policy", "beyond", "before"), [
    ("earliest", 0, 500),
    ("latest", 100, 900),
])
def test_earliest_and_latest_move_to_that_end_of_the_log_and_say_why(
    policy: str, beyond: int, before: int,
) -> None:
    log = _log((0, 100), (500, 900))

    points = plan_starting_points(TOPIC, {0: 250, 1: 10}, log, policy)

    assert (points[0].offset, points[0].abandoned) == (beyond, 250)
    assert (points[1].offset, points[1].abandoned) == (before, 10)
    assert "beyond the end of the broker's log [0, 100)" in points[0].reason
    assert "before the start of the broker's log [500, 900)" in points[1].reason


def test_a_recreated_topic_invalidates_offsets_that_look_in_range() -> None:
    """The new log may have outgrown the stored offset: only the topic id tells."""
    log = _log((0, 300), (0, 40), topic_id="id-2")

    with pytest.raises(OffsetOutOfRange) as raised:
        plan_starting_points(TOPIC, {0: 250, 1: 250}, log, "fail", "id-1")
    moved = plan_starting_points(TOPIC, {0: 250, 1: 250}, log, "earliest", "id-1")

    message = str(raised.value)
    assert ("partition 0: stored offset 250 belongs to an earlier topic of that name "
            "(id id-1, now id-2, log [0, 300))") in message
    assert "move the stored offsets of partitions [0] back to the new log's start" in message
    assert moved == {
        0: StartingPoint(0, 250, moved[0].reason), 1: StartingPoint(0, 250, moved[1].reason)}


@pytest.mark.parametrize(("placed", "now"), [(None, "id-2"), ("id-1", None), ("id-1", "id-1")])
def test_an_unknown_or_unchanged_topic_id_leaves_the_range_check_alone(
    placed: str | None, now: str | None,
) -> None:
    points = plan_starting_points(TOPIC, {0: 250}, _log((0, 300), topic_id=now), "fail", placed)

    assert points == {0: StartingPoint(250)}


def test_an_unknown_policy_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        plan_starting_points(TOPIC, {}, _log((0, 1)), "skip")


def test_the_policy_defaults_to_fail_and_accepts_any_case() -> None:
    assert load_settings(environ={}).on_offset_out_of_range == "fail"
    env = {"AUDIT_ON_OFFSET_OUT_OF_RANGE": "Earliest"}
    assert load_settings(environ=env).on_offset_out_of_range == "earliest"
    with pytest.raises(ConfigurationError, match="on_offset_out_of_range"):
        load_settings(environ={"AUDIT_ON_OFFSET_OUT_OF_RANGE": "skip"})


def test_kafka_partitions_pins_partitions_or_joins_the_group_when_empty() -> None:
    assert load_settings(environ={}).kafka_partitions == ()
    assert load_settings(environ={"AUDIT_KAFKA_PARTITIONS": " 3, 0 "}).kafka_partitions == (0, 3)
    for bad in ("a", "-1", "1,1"):
        with pytest.raises(ConfigurationError, match="kafka_partitions"):
            load_settings(environ={"AUDIT_KAFKA_PARTITIONS": bad})
