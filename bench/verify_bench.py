"""Verify throughput: `verify` from PostgreSQL (--jobs 1 and 2) and from export files.

    .venv/bin/python bench/verify_bench.py            # 1,000,000 records, 20 tenants

Builds valid chains directly with `chain.py` (realistic sample events, validated once per
template, then re-stamped), COPYs them into a fresh migrated database, then times the real
CLI as a subprocess: `verify --jobs 1`, `verify --jobs 2`, `export` of every tenant and
`verify --file` of all the exports. Uses AUDIT_TEST_DATABASE_URL (an admin URL) when set,
otherwise an embedded PostgreSQL in a temporary directory. Prints records/s per step.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy.engine import make_url

from audit_service.core.chain import HASHED_FIELDS, ChainHead, advance, chain_event, genesis_record
from audit_service.core.events import ValidationLimits, parse_event
from audit_service.dev.devstack import EmbeddedPostgres
from audit_service.dev.samples import encode_event, sample_event, tenant_names
from audit_service.storage.migrations import upgrade_to_head

CLI = str(Path(sys.executable).with_name("audit-service"))
RESULTS = Path(__file__).resolve().parent / "results"
COMMAND_TIMEOUT_S = 1800
START = datetime(2026, 1, 1, tzinfo=UTC)
TEMPLATES_PER_TENANT = 500
"""Distinct validated events per tenant; records reuse them with a fresh id and time."""
EVENT_SPACING = timedelta(milliseconds=40)
COLUMNS = (*HASHED_FIELDS, "record_hash", "kafka_topic", "kafka_partition", "kafka_offset")


@dataclass(frozen=True)
class Dataset:
    tenants: int
    records: int
    seed: int


def _templates(tenant: str, rng: random.Random) -> list[dict[str, Any]]:
    """Validated events (defaults filled in, JSONB-stable), as the writer would chain them."""
    limits = ValidationLimits()
    events = []
    for n in range(TEMPLATES_PER_TENANT):
        moment = START + n * EVENT_SPACING
        key, value = encode_event(sample_event(tenant, rng, moment))
        events.append(parse_event(key, value, limits, moment))
    return events


def _pg_array(values: list[str]) -> str:
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'"{v}"' for v in escaped) + "}"


def _csv_row(record: dict[str, Any], offset: int) -> list[Any]:
    row: list[Any] = []
    for field in HASHED_FIELDS:
        value = record[field]
        if field in ("actor_permissions", "entity_ids"):
            value = _pg_array(value)
        elif field in ("context", "decision", "outcome"):
            value = json.dumps(value)
        row.append(value)
    return [*row, record["record_hash"], "audit.events", offset % 4, offset]


def _write_tenant(args: tuple[str, int, int, Path]) -> tuple[str, int, str, str]:
    """Write one tenant's chain as CSV for COPY; returns (tenant, last seq, hash, time)."""
    tenant, count, seed, path = args
    rng = random.Random(f"{seed}:{tenant}")
    templates = _templates(tenant, rng)
    record = genesis_record(tenant, START)
    head = advance(ChainHead.empty(tenant), record)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_csv_row(record, 0))
        for n in range(1, count):
            event = dict(templates[n % TEMPLATES_PER_TENANT])
            moment = START + n * EVENT_SPACING
            event["audit_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            event["timestamp"] = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
            record = chain_event(head, event, moment + timedelta(milliseconds=5))
            head = advance(head, record)
            writer.writerow(_csv_row(record, n))
    return tenant, head.last_sequence, head.last_hash, record["timestamp"]


def load_dataset(database_url: str, dataset: Dataset, scratch: Path) -> None:
    """Generate the chains (one process per core) and COPY them in, heads included."""
    tenants = tenant_names(dataset.tenants)
    per_tenant = dataset.records // dataset.tenants
    jobs = [(t, per_tenant, dataset.seed, scratch / f"{t}.csv") for t in tenants]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        heads = pool.map(_write_tenant, jobs)
    url = make_url(database_url)
    connection = psycopg2.connect(
        dbname=url.database, user=url.username, password=url.password,
        host=url.query.get("host", url.host), port=url.port,
    )
    try:
        with connection, connection.cursor() as cursor:
            for _, _, _, path in jobs:
                with path.open(encoding="utf-8") as handle:
                    cursor.copy_expert(f"COPY audit_records ({', '.join(COLUMNS)}) "
                                       "FROM STDIN (FORMAT csv, NULL '\\N')", handle)
                path.unlink()
            buffer = io.StringIO()
            csv.writer(buffer).writerows(heads)
            buffer.seek(0)
            cursor.copy_expert(
                "COPY audit_chain_state (tenant_id, last_sequence, last_hash, last_timestamp) "
                "FROM STDIN (FORMAT csv)", buffer,
            )
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE audit_records")
    finally:
        connection.close()


@contextmanager
def database(scratch: Path) -> Iterator[str]:
    """A fresh migrated database on AUDIT_TEST_DATABASE_URL's server or an embedded one."""
    admin_url = os.environ.get("AUDIT_TEST_DATABASE_URL")
    server = None
    if not admin_url:
        server = EmbeddedPostgres.start(scratch / "pg")
        admin_url = server.url("postgres")
    name = f"verify_bench_{uuid.uuid4().hex[:8]}"
    _admin(admin_url, f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_to_head(url)
        yield url
    finally:
        _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if server is not None:
            server.stop()


def _admin(admin_url: str, statement: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(statement))
    engine.dispose()


@dataclass(frozen=True)
class Timing:
    seconds: float
    cpu_seconds: float
    """User + system time of the command and its worker processes (not PostgreSQL's):
    unlike wall time, barely affected by other load on a shared machine."""
    stdout: str


def _timed_cli(args: list[str], database_url: str) -> Timing:
    """Run the real CLI as a subprocess (startup included) and time it."""
    env = {**os.environ, "AUDIT_DATABASE_URL": database_url}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, check=False,
                          timeout=COMMAND_TIMEOUT_S)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(seconds, cpu, done.stdout)


def _rates(timing: Timing, records: int) -> dict[str, float]:
    return {"seconds": round(timing.seconds, 2), "records_per_s": round(records / timing.seconds),
            "client_cpu_us_per_record": round(timing.cpu_seconds / records * 1e6, 1)}


def _verify_rate(args: list[str], database_url: str, expected: int) -> dict[str, float]:
    timing = _timed_cli([*args, "--json"], database_url)
    report = json.loads(timing.stdout)
    if not report["ok"] or report["records"] != expected:
        raise SystemExit(f"verify {args}: unexpected report {report}")
    return _rates(timing, expected)


def _say(label: str, rate: dict[str, float]) -> None:
    print(f"{label}: {rate['records_per_s']:,} records/s ({rate['seconds']}s wall, "
          f"{rate['client_cpu_us_per_record']} us client CPU per record)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = Dataset(args.tenants, args.records, args.seed)
    records = dataset.records // dataset.tenants * dataset.tenants
    scratch = Path(tempfile.mkdtemp(prefix="verify-bench-"))
    results: dict[str, Any] = {"records": records, "tenants": dataset.tenants,
                               "cpus": os.cpu_count()}
    try:
        with database(scratch) as url:
            started = time.perf_counter()
            load_dataset(url, dataset, scratch)
            print(f"dataset: {records:,} records, {dataset.tenants} tenants, built and "
                  f"loaded in {time.perf_counter() - started:.0f}s", flush=True)
            for jobs in (1, 2):
                results[f"postgresql_jobs_{jobs}"] = rate = _verify_rate(
                    ["verify", "--jobs", str(jobs)], url, records)
                _say(f"verify from PostgreSQL, --jobs {jobs}", rate)
            exports = scratch / "exports"
            exports.mkdir()
            files = [str(exports / f"{tenant}.jsonl") for tenant in tenant_names(dataset.tenants)]
            timings = [_timed_cli(["export", "--tenant", Path(f).stem, "--output", f], url)
                       for f in files]
            results["export"] = rate = _rates(Timing(
                sum(t.seconds for t in timings), sum(t.cpu_seconds for t in timings), ""), records)
            _say("export (one process per tenant)", rate)
            size = sum(Path(f).stat().st_size for f in files)
            print(f"export size: {size / 2**20:,.0f} MiB, {size / records:,.0f} bytes per record")
            results["export_file"] = rate = _verify_rate(
                ["verify", *(arg for f in files for arg in ("--file", f))], url, records)
            _say(f"verify --file (all {len(files)} exports, one process)", rate)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verify.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {RESULTS / 'verify.json'}")


if __name__ == "__main__":
    main()
