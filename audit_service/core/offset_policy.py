"""Where a partition resumes, and what happens when the broker no longer holds that offset.

Pure: the daemon supplies the offsets stored in PostgreSQL and each partition's log range
as the broker reports it, and applies the answer.

Why it matters: a batch skips every message below the stored offset (that is how two
instances never chain a message twice). When the broker lost its log (a memory-only broker
restarted, the topic was deleted and recreated, retention removed events before they were
consumed), the stored offset no longer points into the log. Resuming silently elsewhere
would lose events without a trace (the new log's first offsets would count as "already
committed"), and waiting for the log to grow past it would do the same later. So the
operator decides, through `on_offset_out_of_range`, and the default stops the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from audit_service.core.errors import AuditServiceError

POLICIES = ("fail", "earliest", "latest")
"""Values of the `on_offset_out_of_range` setting."""


@dataclass(frozen=True, slots=True)
class LogRange:
    """A partition's log as the broker holds it: first offset kept, next offset written."""

    begin: int
    end: int

    def __str__(self) -> str:
        return f"[{self.begin}, {self.end})"


@dataclass(frozen=True, slots=True)
class TopicLog:
    """The topic as the broker holds it now: its id (KIP-516; None if the broker does not
    say) and the measured partitions' ranges."""

    topic_id: str | None
    ranges: Mapping[int, LogRange]


@dataclass(frozen=True, slots=True)
class StartingPoint:
    """Where to resume a partition; `abandoned` is the stored offset a policy moved away from,
    `reason` says why."""

    offset: int
    abandoned: int | None = None
    reason: str = ""


class OffsetOutOfRange(AuditServiceError):
    """A stored offset does not point into the broker's log and the policy is `fail`."""


def _problem(topic: str, partition: int, stored: int, log: TopicLog,
             replaced_id: str | None) -> str | None:
    """Why `stored` cannot be resumed from, or None when it can."""
    current = log.ranges[partition]
    where = f"topic {topic!r} partition {partition}: stored offset {stored}"
    if replaced_id:
        return (f"{where} belongs to an earlier topic of that name (id {replaced_id}, "
                f"now {log.topic_id}, log {current})")
    if stored > current.end:
        return f"{where} is beyond the end of the broker's log {current}"
    if stored < current.begin:
        return f"{where} is before the start of the broker's log {current}"
    return None


def plan_starting_points(
    topic: str, stored: Mapping[int, int], log: TopicLog, policy: str,
    placed_topic_id: str | None = None,
) -> dict[int, StartingPoint]:
    """A starting point for every partition measured in `log`.

    A partition with no stored offset was never consumed: it starts at the beginning of
    its log. A stored offset inside the log (its end included: all consumed) is kept,
    unless the topic's id differs from `placed_topic_id` (the id this process last
    resumed from: the topic was deleted and created again, so every stored offset belongs
    to the old log, whatever its value). Otherwise `earliest` and `latest` move to that
    end of the log, and `fail` raises one OffsetOutOfRange naming every such partition.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    replaced_id = (placed_topic_id if placed_topic_id and log.topic_id
                   and log.topic_id != placed_topic_id else None)
    points: dict[int, StartingPoint] = {}
    failures: list[str] = []
    hidden: list[int] = []  # failed, yet a new process would find the offset in range
    for partition, current in sorted(log.ranges.items()):
        offset = stored.get(partition)
        problem = None if offset is None else _problem(
            topic, partition, offset, log, replaced_id)
        if offset is None:
            points[partition] = StartingPoint(current.begin)
        elif problem is None:
            points[partition] = StartingPoint(offset)
        elif policy == "fail":
            failures.append(problem)
            if current.begin <= offset <= current.end:
                hidden.append(partition)
        else:
            target = current.begin if policy == "earliest" else current.end
            points[partition] = StartingPoint(target, abandoned=offset, reason=problem)
    if failures:
        remedy = "set on_offset_out_of_range = earliest or latest to resume"
        if hidden:
            remedy = (f"move the stored offsets of partitions {hidden} back to the new log's "
                      "start (a new process cannot tell the topics apart by offset), then "
                      + remedy)
        raise OffsetOutOfRange(
            f"{'; '.join(failures)}. The broker lost or deleted events, or the topic was "
            f"recreated. Check the broker, then {remedy} (docs/operations.md, 'Offsets out "
            "of range')"
        )
    return points
