"""Does a second validation worker help? The shipped daemon over one topic, per setting.

    .venv/bin/python bench/worker_count_bench.py            # 100,000 events, workers 1 and 2

Fills one topic with the `make bench` workload, then drains it with `audit-service run
--exit-when-idle` (bench/service_runs.py) into a fresh database per run, alternating the
`validation_workers` settings `--rounds` times so both see the same machine state. Prints
each run's events/s and CPU us/event by role, then the best rate per setting.
"""

from __future__ import annotations

import argparse
import sys
import time

from service_runs import ServiceRun, drain_with_service
from stack import fill_topic, running_stack
from workload import encoded_events


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _line(workers: int, run: ServiceRun) -> str:
    cpu = "  ".join(f"{role} {us:5.1f}" for role, us in
                    run.usage.cpu_us_per_event(run.events).items())
    return (f"workers={workers}  {run.rate:8,.0f} events/s  cores {run.usage.cores_busy:.2f}"
            f"  CPU us/event: {cpu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    best: dict[int, float] = {}
    with running_stack() as stack:
        _say(f"filling a topic with {args.events:,} events")
        topic = stack.new_topic()
        fill_topic(stack.bootstrap, topic, encoded_events(args.events))
        for round_ in range(args.rounds):
            for workers in args.workers:
                _say(f"round {round_ + 1}: validation_workers={workers}")
                run = drain_with_service(
                    stack.new_database(), stack.bootstrap, topic, args.events,
                    stack.scratch / f"service-{workers}-{round_}.log",
                    {"AUDIT_VALIDATION_WORKERS": str(workers)},
                )
                if not run.verified:
                    raise RuntimeError("verify failed after the run")
                print(_line(workers, run), flush=True)
                best[workers] = max(best.get(workers, 0.0), run.rate)
    for workers, rate in best.items():
        print(f"best with validation_workers={workers}: {rate:,.0f} events/s")


if __name__ == "__main__":
    main()
