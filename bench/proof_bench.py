"""Proofs: generation time at 10k, 100k and 1M records, and what the tree nodes cost the
write path.

    .venv/bin/python bench/proof_bench.py             # 1,000,000 records, ~7 min on 2 cores

Builds one tenant of 1,000,000 valid chained records directly with the core functions (the
`make bench` workload's events, validated once per template, then re-stamped), COPYs them
in with the tree nodes the batch would have kept and signed checkpoints at 10,000,
100,000, 999,000 and 1,000,000, then times `auditing.proofs` in-process, exactly what
`prove` runs (its DB reads and self-check included, not process start-up): ~200 random
inclusion proofs per tree size and repeated consistency proofs; median, p99 and the SQL
statements per proof. Write path: the nodes of batches of 2,000 appended records inserted
with `ChainStore.insert_tree_nodes` in real transactions, per record, plus the CPU of
picking them from each append, against the service's time per event measured in the same
run (`audit-service run` over 100,000 events). Results go to bench/results/proofs.json.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
from service_runs import drain_with_service
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from stack import Stack, fill_topic, running_stack
from verify_bench import COLUMNS, _csv_row
from workload import encoded_events, wire_event

from audit_service.auditing.proofs import prove_consistency, prove_inclusion
from audit_service.core.chain import ChainHead, advance, chain_event, genesis_record
from audit_service.core.checkpoint import format_checkpoint, tenant_origin
from audit_service.core.events import ValidationLimits, parse_event
from audit_service.core.merkle import CompactRange, Node, leaf_hash
from audit_service.core.signed_note import generate_signer, sign_note
from audit_service.core.tiles import nodes_to_store
from audit_service.storage.store import ChainStore

RESULTS = Path(__file__).resolve().parent / "results"
TENANT = "tenant-proofs"
ORIGIN = "bench"
START = datetime(2026, 1, 1, tzinfo=UTC)
TEMPLATES = 500
INCLUSION_SAMPLES = 200
CONSISTENCY_REPEATS = 50
BATCH_RECORDS = 2000
"""The default batch_size: records one batch transaction appends."""
WRITE_BATCHES = 250
SERVICE_EVENTS = 100_000


def _checkpoint_sizes(records: int) -> list[int]:
    return sorted({records // 100, records // 10, records - records // 1000, records})


def _records(count: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """A valid chain of `count` records (genesis first) of the `make bench` workload."""
    limits = ValidationLimits()
    templates = []
    for n in range(TEMPLATES):
        moment = START + timedelta(milliseconds=n)
        raw = wire_event(n, moment)
        raw["tenant_id"] = TENANT
        templates.append(parse_event(TENANT.encode(), json.dumps(raw).encode(), limits, moment))
    record = genesis_record(TENANT, START)
    head = advance(ChainHead.empty(TENANT), record)
    yield record
    for n in range(1, count):
        event_ = dict(templates[n % TEMPLATES])
        moment = START + timedelta(milliseconds=40 * n)
        event_["audit_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        event_["timestamp"] = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
        record = chain_event(head, event_, moment + timedelta(milliseconds=5))
        head = advance(head, record)
        yield record


def load_tenant(database_url: str, records: int, scratch: Path) -> dict[str, int]:
    """Write the chain, its kept nodes, head and checkpoints; returns the row counts."""
    signer = generate_signer(ORIGIN)
    sizes = set(_checkpoint_sizes(records))
    tree, nodes, checkpoints = CompactRange(), [], []
    path = scratch / "records.csv"
    last: dict[str, Any] = {}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for offset, record in enumerate(_records(records, random.Random(0))):
            writer.writerow(_csv_row(record, offset))
            nodes.extend(nodes_to_store(tree.append(leaf_hash(bytes.fromhex(
                record["record_hash"])))))
            if tree.size in sizes:
                note = sign_note(format_checkpoint(tenant_origin(ORIGIN, TENANT), tree.size,
                                                   tree.root()), [signer])
                checkpoints.append((tree.size, tree.root(), note))
            last = record
    url = make_url(database_url)
    connection = psycopg2.connect(dbname=url.database, user=url.username, password=url.password,
                                  host=url.query.get("host", url.host), port=url.port)
    try:
        with connection, connection.cursor() as cursor:
            with path.open(encoding="utf-8") as handle:
                cursor.copy_expert(f"COPY audit_records ({', '.join(COLUMNS)}) "
                                   "FROM STDIN (FORMAT csv, NULL '\\N')", handle)
            cursor.executemany(
                "INSERT INTO audit_tree_nodes (tenant_id, level, node_index, hash) "
                "VALUES (%s, %s, %s, %s)", [(TENANT, n.level, n.index, n.hash) for n in nodes])
            cursor.execute(
                "INSERT INTO audit_chain_state (tenant_id, last_sequence, last_hash, "
                "last_timestamp, merkle_range, checkpointed_size, checkpointed_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, now())",
                (TENANT, records - 1, last["record_hash"], last["timestamp"], tree.to_bytes(),
                 records))
            cursor.executemany(
                "INSERT INTO audit_checkpoints (tenant_id, tree_size, root_hash, key_name, note) "
                "VALUES (%s, %s, %s, %s, %s)",
                [(TENANT, size, root, ORIGIN, note) for size, root, note in checkpoints])
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    finally:
        connection.close()
        path.unlink()
    return {"records": records, "tree_nodes": len(nodes), "checkpoints": len(checkpoints)}


@contextmanager
def counted_statements(engine: Engine) -> Iterator[list[int]]:
    """Counts the SQL statements the engine runs (one element per statement)."""
    seen: list[int] = []

    def count(*_: Any) -> None:
        seen.append(1)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _summary(times: list[float], statements: int) -> dict[str, float]:
    times = sorted(times)
    return {"median_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[min(len(times) - 1, round(0.99 * len(times)))], 2),
            "statements_per_proof": round(statements / len(times), 1), "proofs": len(times)}


def _timed(engine: Engine, calls: list[tuple[str, Callable[[], Any]]],
           rng: random.Random) -> dict[str, dict[str, float]]:
    """Time every call, the rows' calls interleaved in a shuffled order: a change in the
    machine's load then shifts every row alike instead of skewing the ratio between them."""
    order = list(calls)
    rng.shuffle(order)
    times: dict[str, list[float]] = {name: [] for name, _ in calls}
    statements = dict.fromkeys(times, 0)
    for name, call in order:
        with counted_statements(engine) as counted:
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1000)
        statements[name] += len(counted)
    return {name: _summary(times[name], statements[name]) for name in times}


def time_proofs(database_url: str, records: int) -> dict[str, dict[str, float]]:
    engine = create_engine(database_url)
    rng = random.Random(1)
    small, medium, almost, full = _checkpoint_sizes(records)
    calls: list[tuple[str, Callable[[], Any]]] = []
    try:
        prove_inclusion(engine, TENANT, 0, small)  # warm the pool and the plans
        for size in (small, medium, full):
            indexes = [rng.randrange(size) for _ in range(INCLUSION_SAMPLES)]
            calls += [(f"inclusion at {size:,}",
                       lambda i=i, s=size: prove_inclusion(engine, TENANT, i, s))
                      for i in indexes]
        for old in (small, medium, almost):
            calls += [(f"consistency {old:,} -> {full:,}",
                       lambda o=old: prove_consistency(engine, TENANT, o, full))
                      ] * CONSISTENCY_REPEATS
        results = _timed(engine, calls, rng)
    finally:
        engine.dispose()
    return results


def storage_bytes(database_url: str) -> dict[str, float]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            records, nodes, table = connection.execute(text(
                "SELECT (SELECT count(*) FROM audit_records), "
                "pg_total_relation_size('audit_tree_nodes'), "
                "pg_total_relation_size('audit_records')")).one()
    finally:
        engine.dispose()
    return {"tree_nodes_bytes_per_record": round(nodes / records, 2),
            "records_bytes_per_record": round(table / records, 1),
            "tree_nodes_share_pct": round(100 * nodes / table, 3)}


def node_insert_cost(database_url: str) -> dict[str, float]:
    """Per record: the kept nodes of WRITE_BATCHES batches of BATCH_RECORDS appends,
    inserted as the batch does (one statement), each in a real committed transaction."""
    engine = create_engine(database_url)
    tree = CompactRange()
    insert_s = transaction_s = 0.0
    node_count = 0
    try:
        for batch in range(WRITE_BATCHES):
            nodes: list[tuple[str, Node]] = []
            for n in range(BATCH_RECORDS):
                record_hash = hashlib.sha256(f"{batch}:{n}".encode()).digest()
                nodes.extend(("tenant-write", node) for node in
                             nodes_to_store(tree.append(leaf_hash(record_hash))))
            node_count += len(nodes)
            began = time.perf_counter()
            with Session(engine) as session, session.begin():
                started = time.perf_counter()
                ChainStore(session, "", "").insert_tree_nodes(nodes)
                insert_s += time.perf_counter() - started
            transaction_s += time.perf_counter() - began
    finally:
        engine.dispose()
    appended = WRITE_BATCHES * BATCH_RECORDS
    return {"records": appended, "nodes": node_count,
            "insert_us_per_record": round(insert_s / appended * 1e6, 3),
            "own_transaction_us_per_record": round(transaction_s / appended * 1e6, 3)}


def node_selection_us_per_record(leaves: int = 200_000) -> float:
    """CPU microseconds per record the batch adds to the tree upkeep by picking, from
    each append's completed nodes, the ones to keep (as `advance_head` does)."""
    hashes = [hashlib.sha256(str(i).encode()).digest() for i in range(leaves)]
    tree, kept = CompactRange(), []
    started = time.process_time()
    for record_hash in hashes:
        tree.append(leaf_hash(record_hash))
    plain = time.process_time() - started
    tree = CompactRange()
    started = time.process_time()
    for record_hash in hashes:
        for node in nodes_to_store(tree.append(leaf_hash(record_hash))):
            kept.append(("tenant", node))
    return max(0.0, time.process_time() - started - plain) / leaves * 1e6


def service_us_per_event(stack: Stack, events: int) -> float:
    url, topic = stack.new_database("proof_bench_service"), stack.new_topic()
    fill_topic(stack.bootstrap, topic, encoded_events(events))
    run = drain_with_service(url, stack.bootstrap, topic, events, stack.scratch / "service.log")
    if not run.verified:
        raise SystemExit("the service run's chains did not verify")
    return 1e6 / run.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--service-events", type=int, default=SERVICE_EVENTS)
    args = parser.parse_args()
    with running_stack() as stack:
        url = stack.new_database("proof_bench")
        started = time.perf_counter()
        loaded = load_tenant(url, args.records, stack.scratch)
        print(f"dataset: {loaded['records']:,} records, {loaded['tree_nodes']:,} tree nodes, "
              f"{loaded['checkpoints']} checkpoints, built and loaded in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        sizes = storage_bytes(url)
        print(f"storage: tree nodes {sizes['tree_nodes_bytes_per_record']} bytes per record "
              f"({sizes['tree_nodes_share_pct']}% of audit_records' "
              f"{sizes['records_bytes_per_record']:,} bytes per record)", flush=True)
        proofs = time_proofs(url, args.records)
        print(f"\n{'proof':<32} {'median ms':>10} {'p99 ms':>8} {'SQL/proof':>10}")
        for name, row in proofs.items():
            print(f"{name:<32} {row['median_ms']:>10} {row['p99_ms']:>8} "
                  f"{row['statements_per_proof']:>10}")
        inclusion = [row["median_ms"] for name, row in proofs.items() if "inclusion" in name]
        flatness = round(inclusion[-1] / inclusion[0], 2)
        print(f"flatness: inclusion median at the largest size / at the smallest = {flatness}")
        write = node_insert_cost(url)
        write["selection_cpu_us_per_record"] = round(node_selection_us_per_record(), 3)
        service_us = service_us_per_event(stack, args.service_events)
        cost = write["insert_us_per_record"] + write["selection_cpu_us_per_record"]
        ratio = 100 * cost / service_us
        print(f"\nwrite path: storing the tree nodes costs {cost:.2f} us per record: "
              f"{write['insert_us_per_record']} us inserting ({write['nodes']} nodes for "
              f"{write['records']:,} records in batches of {BATCH_RECORDS}; "
              f"{write['own_transaction_us_per_record']} us with a commit of its own) and "
              f"{write['selection_cpu_us_per_record']} us CPU picking them; the service takes "
              f"{service_us:.1f} us per event: {ratio:.2f}%")
    RESULTS.mkdir(exist_ok=True)
    results = {"dataset": loaded, "storage": sizes, "proofs": proofs,
               "inclusion_flatness": flatness, "write_path": write,
               "service_us_per_event": round(service_us, 1),
               "tree_nodes_share_of_event_pct": round(ratio, 3)}
    (RESULTS / "proofs.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {RESULTS / 'proofs.json'}")


if __name__ == "__main__":
    main()
