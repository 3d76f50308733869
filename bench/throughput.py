"""`make bench`: the write path against its ceilings and a naive baseline, in ONE run.

Prints a table and writes bench/results/throughput.json. Sizes default to the issue's
(200,000 events for the service, 1,000,000 for the RSS check, 10,000 for the baseline,
60 s at 1,000 events/s for latency; the tenants table runs the same 200,000 events for 20,
1,000 and 10,000 tenants, checkpoints on); `--quick` shrinks everything for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ceilings import copy_rate, drain_rate
from checkpoint_costs import EVERY_RECORDS, checkpoint_environ, tree_upkeep_us_per_record
from naive import naive_rate
from service_runs import ServiceRun, drain_with_service, steady_latency
from stack import fill_topic, running_stack
from workload import DEFAULT_TENANTS, encoded_events

RESULTS = Path(__file__).resolve().parent / "results"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rss-events", type=int, default=1_000_000)
    parser.add_argument("--naive-events", type=int, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--latency-rate", type=int, default=1000)
    parser.add_argument("--tenants", type=lambda text: [int(n) for n in text.split(",")],
                        default=[1000, 10_000],
                        help="tenant counts beside the workload's 20 (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.events, args.rss_events, args.naive_events = 20_000, 40_000, 1_000
        args.latency_seconds = 10.0
        args.tenants = [1000]
    return args


def _total_rss(run: ServiceRun) -> float:
    return run.usage.peak_rss_mib + run.usage.children_peak_rss_mib


def _notes(run: ServiceRun) -> str:
    return (f"verified={run.verified} rss={run.usage.peak_rss_mib:.0f}MiB "
            f"+children {run.usage.children_peak_rss_mib:.0f}MiB")


def _cpu_profile(name: str, run: ServiceRun) -> str:
    """One line: CPU microseconds per event by role between the first and the last record,
    and how many cores they kept busy meanwhile."""
    per_event = run.usage.cpu_us_per_event(run.events)
    roles = " | ".join(f"{role} {us:.0f}" for role, us in per_event.items())
    return (f"CPU us/event, {name}: {roles} | total {sum(per_event.values()):.0f} "
            f"({run.usage.cores_busy:.2f} of {os.cpu_count()} cores busy from the first to "
            "the last record)")


def _service_result(run: ServiceRun) -> dict[str, object]:
    return asdict(run) | {"rate": run.rate,
                          "cpu_us_per_event": run.usage.cpu_us_per_event(run.events)}


def _print_tenants(by_tenants: dict[int, ServiceRun], ceiling: float, big: ServiceRun) -> None:
    """The tenants table (checkpoints on) and its targets' ratios."""
    base = by_tenants[DEFAULT_TENANTS]
    print(f"\n{'tenants':>8} {'events/s':>10} {'x 20 tenants':>13} {'peak RSS MiB':>13}  "
          "genesis batches / steady batches (events/s)")
    most = max(by_tenants)
    for tenants, run in by_tenants.items():
        # Only the largest count's first events span enough batches to time them apart.
        phases = (f"{run.genesis.rate:,.0f} / {run.steady.rate:,.0f} = "
                  f"{run.genesis.rate / run.steady.rate:.2f}"
                  if tenants == most and run.genesis and run.steady and run.steady.rate
                  else "")
        print(f"{tenants:>8} {run.rate:>10,.0f} {run.rate / base.rate:>13.2f} "
              f"{_total_rss(run):>13.0f}  {phases}")
    print(f"{'service, checkpoints on / min(ceiling A, ceiling B)':52} "
          f"{base.rate / ceiling:6.2f}")
    print(f"{f'service at {most} tenants / at {DEFAULT_TENANTS} tenants':52} "
          f"{by_tenants[most].rate / base.rate:6.2f}")
    print(f"{f'peak RSS at {most} tenants / 1M-event run':52} "
          f"{_total_rss(by_tenants[most]) / _total_rss(big):6.2f}")
    for tenants, run in by_tenants.items():
        if tenants != DEFAULT_TENANTS:
            print(_cpu_profile(f"{tenants} tenants", run))


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    args = _arguments()
    RESULTS.mkdir(exist_ok=True)
    results: dict[str, object] = {"arguments": vars(args)}
    with running_stack() as stack:
        _say(f"filling a topic with {args.events} events")
        messages = list(encoded_events(args.events))
        topic = stack.new_topic()
        fill_topic(stack.bootstrap, topic, messages)

        _say("ceiling A: kafka-python drain (poll + json.loads)")
        ceiling_a = drain_rate(stack.bootstrap, topic, args.events)
        _say("ceiling B: PostgreSQL COPY of audit_records rows")
        ceiling_b = copy_rate(stack.new_database(), messages)
        _say(f"baseline: naive per-event design over {args.naive_events} events")
        baseline = naive_rate(stack.new_database(), stack.bootstrap, topic, args.naive_events)
        _say(f"service: audit-service run over {args.events} events")
        service = drain_with_service(stack.new_database(), stack.bootstrap, topic, args.events,
                                     stack.scratch / "service.log")
        _say(f"service with checkpoints every {EVERY_RECORDS} records over {args.events} events")
        signed = drain_with_service(stack.new_database(), stack.bootstrap, topic, args.events,
                                    stack.scratch / "service-checkpoints.log",
                                    checkpoint_environ(stack.scratch))
        del messages

        # Before the tenants runs, which leave 10,000 sink files and large databases in
        # the same PostgreSQL: run after them, p99 was 500 ms against 111-129 ms alone.
        _say(f"latency: {args.latency_rate} events/s for {args.latency_seconds:.0f} s")
        latency = steady_latency(stack.new_database(), stack.bootstrap, stack.new_topic(),
                                 args.latency_rate, args.latency_seconds,
                                 stack.scratch / "service-latency.log")

        by_tenants = {DEFAULT_TENANTS: signed}
        for tenants in args.tenants:
            _say(f"service, checkpoints on, {tenants} tenants over {args.events} events")
            many = stack.new_topic()
            fill_topic(stack.bootstrap, many, encoded_events(args.events, tenants=tenants))
            by_tenants[tenants] = drain_with_service(
                stack.new_database(), stack.bootstrap, many, args.events,
                stack.scratch / f"service-{tenants}-tenants.log",
                checkpoint_environ(stack.scratch), phases=True)

        _say(f"service: audit-service run over {args.rss_events} events (peak RSS)")
        big_topic = stack.new_topic()
        fill_topic(stack.bootstrap, big_topic, encoded_events(args.rss_events))
        big = drain_with_service(stack.new_database(), stack.bootstrap, big_topic,
                                 args.rss_events, stack.scratch / "service-big.log")


    ceiling = min(ceiling_a, ceiling_b)
    rows = [
        ("ceiling A: kafka-python drain", args.events, ceiling_a, ""),
        ("ceiling B: PostgreSQL COPY", args.events, ceiling_b, ""),
        ("baseline: naive per-event", args.naive_events, baseline, ""),
        ("service (audit-service run)", args.events, service.rate, _notes(service)),
        ("service, checkpoints on", args.events, signed.rate, _notes(signed)),
        ("service, RSS run", args.rss_events, big.rate, _notes(big)),
    ]
    print(f"\n{'run':34} {'events':>9} {'events/s':>10}  notes")
    for name, events, rate, notes in rows:
        print(f"{name:34} {events:>9} {rate:>10,.0f}  {notes}")
    ratios = {
        "service / baseline": service.rate / baseline,
        "service / min(ceiling A, ceiling B)": service.rate / ceiling,
        "peak RSS 1M-run / 200k-run": _total_rss(big) / _total_rss(service),
        "checkpoints on / off": signed.rate / service.rate,
    }
    for name, value in ratios.items():
        print(f"{name:40} {value:6.2f}")
    print(_cpu_profile("service run", service))
    print(_cpu_profile("checkpoints on", signed))
    upkeep = tree_upkeep_us_per_record()
    total = sum(service.usage.cpu_us_per_event(service.events).values())
    print(f"Merkle tree upkeep (always on): {upkeep:.1f} us of CPU per record = "
          f"{upkeep / total:.1%} of the service run's {total:.0f} us/event")
    print(_cpu_profile("RSS run", big))
    _print_tenants(by_tenants, ceiling, big)
    print(f"latency at {args.latency_rate}/s over {latency.events} events (timestamp -> "
          f"ingested_at): p50 {latency.p50_ms:.0f} ms, p95 {latency.p95_ms:.0f} ms, "
          f"p99 {latency.p99_ms:.0f} ms, max {latency.max_ms:.0f} ms")
    results.update({
        "ceiling_a_events_per_s": ceiling_a, "ceiling_b_rows_per_s": ceiling_b,
        "baseline_events_per_s": baseline, "service": _service_result(service),
        "service_rss_run": _service_result(big), "ratios": ratios,
        "service_checkpoints": _service_result(signed), "tree_upkeep_us_per_record": upkeep,
        "latency_ms": vars(latency),
        "tenants": {str(n): _service_result(run) for n, run in by_tenants.items()},
    })
    (RESULTS / "throughput.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
