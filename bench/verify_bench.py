"""Read-path throughput: `verify` from PostgreSQL (--jobs 1 and 2), `export`, and
`verify --file` of the exports, against a raw fetch of the same rows.

    .venv/bin/python bench/verify_bench.py            # 1,000,000 records, 20 tenants

Builds valid chains directly with `chain.py` (realistic sample events, validated once per
template, then re-stamped), COPYs them into a fresh migrated database, then times a raw
fetch of the rows verify reads (psycopg2 server-side cursor, nothing built or hashed: the
floor under any reader) and the real CLI as a subprocess: `verify --jobs 1`, `verify
--jobs 2`, `export --all` (every tenant in one process; and an export of one record, the
start-up and memory floor), `verify --file` of all the exports. Uses
AUDIT_TEST_DATABASE_URL (an admin URL) when set, otherwise an embedded PostgreSQL in a
temporary directory. Prints records/s, client CPU and peak RSS per step, and the ratios
of the targets.
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
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from audit_service.config import normalise_database_url
from audit_service.core.chain import HASHED_FIELDS, ChainHead, advance, chain_event, genesis_record
from audit_service.core.events import ValidationLimits, parse_event
from audit_service.dev.devstack import EmbeddedPostgres
from audit_service.dev.samples import encode_event, sample_event, tenant_names
from audit_service.storage.migrations import upgrade_to_head
from audit_service.storage.reader import STREAM_CHUNK_ROWS, record_rows_query

CLI = str(Path(sys.executable).with_name("audit-service"))
RESULTS = Path(__file__).resolve().parent / "results"
COMMAND_TIMEOUT_S = 1800
START = datetime(2026, 1, 1, tzinfo=UTC)
TEMPLATES_PER_TENANT = 500
"""Distinct validated events per tenant; records reuse them with a fresh id and time."""
EVENT_SPACING = timedelta(milliseconds=40)
COLUMNS = (*HASHED_FIELDS, "record_hash", "kafka_topic", "kafka_partition", "kafka_offset")
STARTUP_RUNS = 3
"""One-record exports timed for the start-up cost of a CLI process (the median is used)."""
PEAK_RSS_SAMPLE_S = 0.02


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


def _connect(database_url: str) -> Any:
    url = make_url(database_url)
    return psycopg2.connect(
        dbname=url.database, user=url.username, password=url.password,
        host=url.query.get("host", url.host), port=url.port,
    )


def load_dataset(database_url: str, dataset: Dataset, scratch: Path) -> None:
    """Generate the chains (one process per core) and COPY them in, heads included."""
    tenants = tenant_names(dataset.tenants)
    per_tenant = dataset.records // dataset.tenants
    jobs = [(t, per_tenant, dataset.seed, scratch / f"{t}.csv") for t in tenants]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        heads = pool.map(_write_tenant, jobs)
    connection = _connect(database_url)
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
    if admin_url:
        admin_url = normalise_database_url(admin_url)
    else:
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
    peak_rss_mib: float
    """Peak resident set of the command plus the peaks of its worker processes."""
    stdout: str


class PeakRss:
    """The peak resident set of a process plus those of its children (verify's workers),
    sampled from /proc until it exits: ru_maxrss would count the bench's own size, which a
    child inherits up to its exec."""

    def __init__(self, pid: int):
        self._pid = pid
        self._peaks: dict[int, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _peak_kib(pid: int) -> int | None:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None  # a zombie: it has exited

    def _children(self) -> list[int]:
        try:
            return [int(p) for p in
                    Path(f"/proc/{self._pid}/task/{self._pid}/children").read_text().split()]
        except (OSError, ValueError):
            return []

    def _run(self) -> None:
        while (own := self._peak_kib(self._pid)) is not None:
            self._peaks[self._pid] = max(self._peaks.get(self._pid, 0), own)
            for child in self._children():
                if (peak := self._peak_kib(child)) is not None:
                    self._peaks[child] = max(self._peaks.get(child, 0), peak)
            time.sleep(PEAK_RSS_SAMPLE_S)

    def result(self) -> float:
        """MiB, once the process has exited."""
        self._thread.join(timeout=5)
        return sum(self._peaks.values()) / 1024


def _timed_cli(args: list[str], database_url: str) -> Timing:
    """Run the real CLI as a subprocess (startup included) and time it."""
    env = {**os.environ, "AUDIT_DATABASE_URL": database_url}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([CLI, *args], env=env, stdout=out, stderr=err, text=True)
        sampler = PeakRss(process.pid)
        deadline = threading.Timer(COMMAND_TIMEOUT_S, process.kill)
        deadline.start()
        try:  # wait4 rather than Popen.wait: it reaps the process with its CPU usage
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            deadline.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        peak_mib = sampler.result()
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(args)} exited {process.returncode}: "
                             f"{err.read()[-2000:]}")
        return Timing(seconds, usage.ru_utime + usage.ru_stime,
                      peak_mib, out.read())


def _rates(timing: Timing, records: int) -> dict[str, float]:
    return {"seconds": round(timing.seconds, 2), "records_per_s": round(records / timing.seconds),
            "client_cpu_us_per_record": round(timing.cpu_seconds / records * 1e6, 1),
            "peak_rss_mib": round(timing.peak_rss_mib, 1)}


def _verify_rate(args: list[str], database_url: str, expected: int) -> dict[str, float]:
    timing = _timed_cli([*args, "--json"], database_url)
    report = json.loads(timing.stdout)
    if not report["ok"] or report["records"] != expected:
        raise SystemExit(f"verify {args}: unexpected report {report}")
    return _rates(timing, expected)


def raw_fetch(database_url: str, tenants: list[str], expected: int) -> dict[str, float]:
    """Every tenant's rows as `verify` reads them (same query, same snapshot per tenant, a
    server-side cursor with the same chunk size), in this process, nothing built or
    hashed: what reading alone costs, the floor under verify and export."""
    connection = _connect(database_url)
    connection.set_session(isolation_level="REPEATABLE READ", readonly=True)
    started, cpu = time.perf_counter(), time.process_time()
    fetched = 0
    try:
        for tenant in tenants:
            compiled = record_rows_query(tenant).compile(dialect=postgresql.dialect())
            with connection, connection.cursor(name="raw_fetch") as cursor:
                cursor.itersize = STREAM_CHUNK_ROWS
                cursor.execute(str(compiled), compiled.params)
                for _ in cursor:
                    fetched += 1
    finally:
        connection.close()
    if fetched != expected:
        raise SystemExit(f"raw fetch: {fetched} rows, expected {expected}")
    timing = Timing(time.perf_counter() - started, time.process_time() - cpu,
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "")
    return _rates(timing, expected)


def _say(label: str, rate: dict[str, float]) -> None:
    print(f"{label}: {rate['records_per_s']:,} records/s ({rate['seconds']}s wall, "
          f"{rate['client_cpu_us_per_record']} us client CPU per record, "
          f"peak RSS {rate['peak_rss_mib']:.0f} MiB)", flush=True)


def _ratio(label: str, value: float, target: float) -> None:
    verdict = "met" if value >= target else "MISSED"
    print(f"ratio {label}: {value:.2f} (target >= {target}: {verdict})", flush=True)


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
            tenants = tenant_names(dataset.tenants)
            results["raw_fetch"] = raw = raw_fetch(url, tenants, records)
            _say("raw fetch (server-side cursor, no hashing, in-process)", raw)
            for jobs in (1, 2):
                results[f"postgresql_jobs_{jobs}"] = rate = _verify_rate(
                    ["verify", "--jobs", str(jobs)], url, records)
                _say(f"verify from PostgreSQL, --jobs {jobs}", rate)
            exports = scratch / "exports"
            results["export"] = rate = _rates(
                _timed_cli(["export", "--all", "--output-dir", str(exports)], url), records)
            _say("export --all (one process, as verify --jobs 1)", rate)
            files = [str(exports / f"{tenant}.jsonl") for tenant in tenants]
            startups = sorted((_timed_cli(["export", "--tenant", tenants[0], "--to-seq", "0",
                                           "--output", str(scratch / f"one-{n}.jsonl")], url)
                               for n in range(STARTUP_RUNS)), key=lambda t: t.seconds)
            startup = startups[len(startups) // 2]
            results["export_one_record"] = {"seconds": round(startup.seconds, 2),
                                            "cpu_seconds": round(startup.cpu_seconds, 2),
                                            "peak_rss_mib": round(startup.peak_rss_mib, 1)}
            print(f"export of one record (a CLI process's start-up, median of {STARTUP_RUNS}): "
                  f"{startup.seconds:.2f}s wall, {startup.cpu_seconds:.2f}s CPU, "
                  f"peak RSS {startup.peak_rss_mib:.0f} MiB", flush=True)
            size = sum(Path(f).stat().st_size for f in files)
            print(f"export size: {size / 2**20:,.0f} MiB, {size / records:,.0f} bytes per record")
            results["export_file"] = rate = _verify_rate(
                ["verify", *(arg for f in files for arg in ("--file", f))], url, records)
            _say(f"verify --file (all {len(files)} exports, one process)", rate)
            verify_1, verify_2 = results["postgresql_jobs_1"], results["postgresql_jobs_2"]
            results["ratios"] = ratios = {
                "verify_jobs_2_over_raw_fetch":
                    verify_2["records_per_s"] / raw["records_per_s"],
                "export_over_verify_jobs_1":
                    results["export"]["records_per_s"] / verify_1["records_per_s"],
                "export_peak_rss_over_one_record_export":
                    results["export"]["peak_rss_mib"] / startup.peak_rss_mib,
            }
            _ratio("verify --jobs 2 / raw fetch", ratios["verify_jobs_2_over_raw_fetch"], 0.5)
            _ratio("export --all / verify --jobs 1", ratios["export_over_verify_jobs_1"], 1.0)
            print(f"memory: export's peak RSS {results['export']['peak_rss_mib']:.0f} MiB for "
                  f"{records:,} records vs {startup.peak_rss_mib:.0f} MiB for one "
                  f"(x{ratios['export_peak_rss_over_one_record_export']:.2f}); verify --jobs 1 "
                  f"{verify_1['peak_rss_mib']:.0f} MiB for {records:,}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verify.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {RESULTS / 'verify.json'}")


if __name__ == "__main__":
    main()
