"""Reconcile throughput: `audit-service reconcile` over a topic the daemon has stored.

    .venv/bin/python bench/reconcile_bench.py             # 200,000 events, 20 tenants

Fills a 4-partition topic with the `make bench` workload, lets the shipped daemon chain it
(`run --exit-when-idle`), then times the real CLI as a subprocess (start-up included):
`reconcile --json --partition 0` (a quarter of the topic: peak memory must not grow with
its size) and `reconcile --json --jobs N` over the whole topic for N in --jobs. Each run
reports peak RSS and CPU per message by role (process_usage). Ceiling A of `make bench`
(kafka-python drain: poll + json.loads) is measured on the same topic in the same run.
Results go to bench/results/reconcile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ceilings import drain_rate
from process_usage import BROKER, CHILDREN, DAEMON, POSTGRES, UsageSampler
from service_runs import drain_with_service
from stack import fill_topic, running_stack
from workload import encoded_events

RESULTS = Path(__file__).resolve().parent / "results"
COMMAND_TIMEOUT_S = 1800


@dataclass
class ReconcileRun:
    messages: int
    seconds: float
    peak_rss_mib: float
    """Of the reconcile process plus the sum of its workers' peaks."""
    cpu_us_per_message: dict[str, float]
    """By role: reconcile (the CLI), its workers, PostgreSQL, the broker."""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _reconcile(env: dict[str, str], *args: str) -> ReconcileRun:
    """One `reconcile --json` subprocess (start-up included), checked clean."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "audit_service", "reconcile", "--json", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    usage = UsageSampler(process.pid)
    window_start = time.time()
    stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT_S)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"reconcile {args} exited {process.returncode}: "
                         f"{stdout[-2000:]}{stderr[-2000:]}")
    result = usage.result(window_start, time.time())
    messages = json.loads(stdout)["totals"]["scanned"]
    roles = {"reconcile": DAEMON, "workers": CHILDREN, "postgres": POSTGRES, "broker": BROKER}
    return ReconcileRun(
        messages, seconds, result.peak_rss_mib + result.children_peak_rss_mib,
        {name: round(result.cpu_s[role] / messages * 1e6, 1) for name, role in roles.items()})


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4],
                        help="--jobs values to time over the whole topic")
    args = parser.parse_args()
    with running_stack() as stack:
        _say(f"filling a topic with {args.events} events")
        topic = stack.new_topic()
        fill_topic(stack.bootstrap, topic, encoded_events(args.events))
        _say("ceiling A: kafka-python drain (poll + json.loads)")
        ceiling = drain_rate(stack.bootstrap, topic, args.events)
        _say("storing the topic with audit-service run --exit-when-idle")
        database_url = stack.new_database()
        drain_with_service(database_url, stack.bootstrap, topic, args.events,
                           stack.scratch / "service.log")
        env = {**os.environ, "AUDIT_DATABASE_URL": database_url,
               "AUDIT_KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap, "AUDIT_KAFKA_TOPIC": topic,
               "AUDIT_CONSUMER_GROUP": f"bench-{topic}", "AUDIT_LOG_LEVEL": "WARNING"}
        _say("reconcile --partition 0")
        one = _reconcile(env, "--partition", "0")
        runs = {"reconcile --partition 0": one}
        for jobs in args.jobs:
            _say(f"reconcile --jobs {jobs} (every partition)")
            runs[f"reconcile --jobs {jobs}"] = _reconcile(env, "--jobs", str(jobs))
    for name, run in runs.items():
        if name != "reconcile --partition 0" and run.messages != args.events:
            raise SystemExit(f"{name} scanned {run.messages} of {args.events} messages")
    print(f"\n{'run':34} {'messages':>9} {'messages/s':>11}  notes")
    print(f"{'ceiling A: kafka-python drain':34} {args.events:>9} {ceiling:>11,.0f}")
    for name, run in runs.items():
        cpu = " | ".join(f"{role} {us:.0f}" for role, us in run.cpu_us_per_message.items())
        print(f"{name:34} {run.messages:>9} {run.rate:>11,.0f}  {run.seconds:.1f}s wall, "
              f"peak RSS {run.peak_rss_mib:.0f} MiB, CPU us/message: {cpu}")
    best = max(run.rate for name, run in runs.items() if "--jobs" in name)
    print(f"{'best reconcile / ceiling A':40} {best / ceiling:6.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reconcile.json").write_text(json.dumps({
        "events": args.events, "cpus": os.cpu_count(), "ceiling_a_messages_per_s": ceiling,
        "runs": {name: asdict(run) | {"rate": run.rate} for name, run in runs.items()},
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
