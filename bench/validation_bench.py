"""What validation costs per event: `prepare_batch` against a JSON floor, and the worker trip.

    .venv/bin/python bench/validation_bench.py            # 50,000 events, best of 5

Pure CPU, no PostgreSQL or broker. Rows, all from the same run:
- floor: `json.loads` then `json.dumps(sort_keys=True, separators=(",", ":"))` of the same
  bytes: the least any validator that re-serialises canonically can spend;
- prepare_batch over the `make bench` workload (~800-byte events, 20 tenants), and over a
  mix: 80% of those, 10% valid events in other producer spellings (millisecond `+00:00`
  timestamps, an int where a float is expected, an upper-case UUID) and 10% rejected ones
  of six kinds;
- the validation worker (`ValidationPool` with workers=1, one batch in flight at a time):
  wall time per event, and the CPU per event of each side of the pipe: the daemon's
  (sending messages, unpacking results) and the worker's (all of it, and beyond the
  in-line prepare_batch: what the process boundary costs).

CPU times are `time.process_time()` (or /proc for the worker): in line, each batch's best
of `--repeat` (floor and prepare_batch timed in turn); through the worker, the best of
`--repeat` passes. Other load on the machine disturbs them less than wall time, and the
ratio to the floor is the number to compare between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from workload import encoded_events

from audit_service.core.events import ValidationLimits
from audit_service.core.messages import ConsumedMessage
from audit_service.ingest.batch import prepare_batch
from audit_service.ingest.validation_pool import ValidationPool

BATCH = 2000
"""The daemon's default batch_size."""
TOPIC = "audit.events"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _respelled(event: dict, index: int) -> dict:
    """The same event as another producer might send it; still valid."""
    variant = index % 3
    if variant == 0:
        event["timestamp"] = event["timestamp"][:23] + "+00:00"
    elif variant == 1:
        event["context"]["llm_cost_usd"] = 1
    else:
        event["audit_id"] = event["audit_id"].upper()
    return event


def _rejected(event: dict, index: int) -> bytes:
    """A message the validator must quarantine, one of six kinds in turn."""
    variant = index % 6
    if variant == 0:
        return json.dumps(event).encode()[:-9]  # cut short: not JSON
    if variant == 1:
        event["severty"] = "info"  # a typo: unknown field
    elif variant == 2:
        event["tenant_id"] = "someone-else"  # does not match the message key
    elif variant == 3:
        event["timestamp"] = "1999-12-31T23:59:59.000000Z"  # outside the window
    elif variant == 4:
        event["context"]["llm_input_tokens"] = "1500"  # wrong type, nested
    else:
        event["event_type"] = "system.genesis"  # reserved
    return json.dumps(event, separators=(",", ":")).encode()


def _messages(count: int, mixed: bool) -> list[ConsumedMessage]:
    messages = []
    for index, (key, value) in enumerate(encoded_events(count)):
        if mixed and index % 10 in (3, 7):
            event = json.loads(value)
            value = (_rejected(event, index // 10) if index % 10 == 3 else
                     json.dumps(_respelled(event, index // 10), separators=(",", ":")).encode())
        messages.append(ConsumedMessage(TOPIC, index % 4, index, key, value))
    return messages


def _batches(messages: list[ConsumedMessage]) -> Iterator[list[ConsumedMessage]]:
    for start in range(0, len(messages), BATCH):
        yield messages[start:start + BATCH]


def _cpu_s(run: Callable[[], object]) -> float:
    started = time.process_time()
    run()
    return time.process_time() - started


def _floor(messages: list[ConsumedMessage]) -> None:
    for message in messages:
        assert message.value is not None
        json.dumps(json.loads(message.value), sort_keys=True, separators=(",", ":"))


def _in_line(valid: list[ConsumedMessage], mixed: list[ConsumedMessage], now: datetime,
             repeat: int) -> dict[str, float]:
    """CPU us/event of the floor and of prepare_batch: each batch timed `repeat` times in
    turn, its best kept (what preemption and other processes' cache traffic leave alone)."""
    limits = ValidationLimits()
    best = {"floor": 0.0, "valid": 0.0, "mixed": 0.0}
    for good, mix in zip(_batches(valid), _batches(mixed), strict=True):
        rounds = [(_cpu_s(partial(_floor, good)), _cpu_s(partial(prepare_batch, good, limits, now)),
                   _cpu_s(partial(prepare_batch, mix, limits, now))) for _ in range(repeat)]
        for name, seconds in zip(best, map(min, zip(*rounds, strict=True)), strict=True):
            best[name] += seconds
    return {name: seconds / len(valid) * 1e6 for name, seconds in best.items()}


def _children_cpu_s() -> float:
    """CPU seconds of this process's live children (the worker, the resource tracker)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == os.getpid():
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def _worker_trip(pool: ValidationPool, messages: list[ConsumedMessage],
                 now: datetime) -> tuple[float, float, float]:
    """(wall, daemon CPU, worker CPU) microseconds per event through the worker."""
    worker_before, started, wall = _children_cpu_s(), time.process_time(), time.perf_counter()
    for batch in _batches(messages):
        pool.submit(batch, now).result()
    wall = time.perf_counter() - wall
    daemon = time.process_time() - started
    worker = _children_cpu_s() - worker_before
    return tuple(seconds / len(messages) * 1e6 for seconds in (wall, daemon, worker))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    now = datetime.now(UTC)
    valid, mixed = _messages(args.events, mixed=False), _messages(args.events, mixed=True)
    best = _in_line(valid, mixed, now, args.repeat)
    pool = ValidationPool(ValidationLimits(), workers=1)
    pool.start()
    try:
        trips = [_worker_trip(pool, valid, now) for _ in range(args.repeat)]
    finally:
        pool.close()
    wall, daemon, worker = (min(column) for column in zip(*trips, strict=True))
    print(f"validation, {args.events:,} events of ~{len(valid[0].value or b''):,} bytes, "
          f"batches of {BATCH:,}, best of {args.repeat} (CPU us/event)")
    print(f"{'floor: json.loads + canonical json.dumps':48} {best['floor']:7.1f}")
    for name, label in (("valid", "prepare_batch, bench workload"),
                        ("mixed", "prepare_batch, mix (10% respelled, 10% rejected)")):
        print(f"{label:48} {best[name]:7.1f}   {best[name] / best['floor']:.2f} x floor")
    print(f"{'worker round trip (workers=1), wall':48} {wall:7.1f}")
    print(f"{'  daemon side of the pipe':48} {daemon:7.1f}")
    print(f"{'  worker process, all':48} {worker:7.1f}   "
          f"{worker - best['valid']:+.1f} beyond in-line prepare_batch")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
