"""Verify chains stored in PostgreSQL: every record, every link, and each tenant's head.

With checkpoints (`verify --checkpoints`), each tenant's records also rebuild its Merkle tree
in the same pass, which must reproduce every signed checkpoint of the sink
(`checkpoint_verify`): that catches a chain rewritten and rehashed, or cut short, which the
chain alone cannot.

Tenants are independent chains, so `jobs > 1` verifies them in that many processes (spawned,
each with its own engine; hashing is CPU-bound, threads would share one core). Every tenant
run can be recorded as one row of `audit_verification_log`.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import Engine, insert

from audit_service.auditing.checkpoint_verify import CheckpointReport, SinkFile, TenantCheckpoints
from audit_service.auditing.export_verify import break_summary
from audit_service.core.chain import (
    BREAK_GAP,
    BREAK_LINK,
    ChainBreak,
    ChainHead,
    VerificationResult,
)
from audit_service.core.record_text import RECORD_HASH, RecordRow, verify_rows
from audit_service.core.signed_note import VerifierKey
from audit_service.storage.engine import create_db_engine, translated_errors
from audit_service.storage.models import AuditVerificationLog
from audit_service.storage.reader import WHOLE_CHAIN, AuditReader, SequenceRange

Progress = Callable[[int], None]
"""Called with the number of records checked since the last call."""

PROGRESS_EVERY_RECORDS: Final = 5000
"""How often a tenant run reports progress (a queue message when it runs in a worker)."""
PROGRESS_POLL_S: Final = 0.2
"""How often the parent drains worker progress while it waits for a result."""


@dataclass(frozen=True, slots=True)
class TenantTask:
    """One tenant's chain (or part of it) to verify against the head the writer recorded."""

    tenant_id: str
    head: ChainHead
    scope: SequenceRange
    checkpoints: TenantCheckpoints | None = None
    """The tenant's signed checkpoints to check over the same pass (whole chains only)."""

    @property
    def reaches_head(self) -> bool:
        """True when the range includes the recorded head, so the tail is checked too."""
        return self.scope.last is None or self.scope.last >= self.head.last_sequence

    @property
    def expected_records(self) -> int:
        """How many records the head says the range holds (for a progress bar)."""
        last = self.head.last_sequence if self.reaches_head else self.scope.last
        return max(0, (last if last is not None else -1) - self.scope.first + 1)


@dataclass(frozen=True, slots=True)
class TenantVerification:
    """One tenant's run: the chain's result and, when they were checked, its checkpoints'."""

    chain: VerificationResult
    checkpoints: CheckpointReport | None = None

    @property
    def valid(self) -> bool:
        return self.chain.valid and (self.checkpoints is None or self.checkpoints.valid)


@dataclass(frozen=True, slots=True)
class _TimedResult:
    result: TenantVerification
    started_at: datetime
    duration_ms: int


def plan(
    reader: AuditReader, tenant_id: str | None = None, scope: SequenceRange = WHOLE_CHAIN
) -> list[TenantTask]:
    """The tenant runs to do, sorted by tenant.

    Tenants are the union of those with a head and those with records, so a chain whose head
    row vanished, or a head whose records vanished, is reported rather than skipped. A range
    starting after a tenant's head has nothing to check for that tenant.
    """
    heads = reader.heads()
    if tenant_id is not None:
        known = tenant_id in heads or reader.record_count(tenant_id) > 0
        tenants = [tenant_id] if known else []
    else:
        tenants = sorted(set(heads) | set(reader.tenants_with_records()))
    tasks = [TenantTask(t, heads.get(t, ChainHead.empty(t)), scope) for t in tenants]
    return [t for t in tasks if scope.first == 0 or t.head.last_sequence >= scope.first]


def plan_with_checkpoints(
    reader: AuditReader, sinks: Mapping[str, SinkFile], verifiers: Sequence[VerifierKey],
    tenant_id: str | None = None,
) -> list[TenantTask]:
    """`plan`'s whole-chain runs, each with its tenant's checkpoints, plus one for every
    tenant the sink has and the database does not (its records were all removed).

    Take `sinks` (`checkpoint_verify.sink_files`) BEFORE this: the daemon appends to the sink
    only after committing, so each tenant's snapshot, read later, holds what was signed.
    """
    tasks = {task.tenant_id: task for task in plan(reader, tenant_id)}
    for tenant in sinks:
        if tenant_id is None or tenant == tenant_id:
            tasks.setdefault(tenant, TenantTask(tenant, ChainHead.empty(tenant), WHOLE_CHAIN))
    return [
        dataclasses.replace(task, checkpoints=TenantCheckpoints(
            tenant, sinks.get(tenant), tuple(verifiers)))
        for tenant, task in sorted(tasks.items())
    ]


def _counted(rows: Iterable[RecordRow], progress: Progress) -> Iterator[RecordRow]:
    pending = 0
    try:
        for row in rows:
            yield row
            pending += 1
            if pending == PROGRESS_EVERY_RECORDS:
                progress(pending)
                pending = 0
    finally:
        if pending:
            progress(pending)


def verify_tenant(
    reader: AuditReader, task: TenantTask, progress: Progress | None = None
) -> TenantVerification:
    """Verify one tenant's range: hashes, links, gap-free sequence, genesis, and the head;
    and its checkpoints when the task has them.

    A range starting after 0 must link to the stored hash of its predecessor (a missing
    predecessor is a break). When the range reaches the recorded head, the last record must
    be that head (a removed tail or a forged extra record fails); otherwise the range must
    be complete up to its last sequence.
    """
    tenant, scope = task.tenant_id, task.scope
    link = None
    if scope.first > 0:
        link = reader.record_hash_at(tenant, scope.first - 1)
        if link is None:
            return TenantVerification(VerificationResult(tenant, 0, None, None, None, ChainBreak(
                tenant, scope.first, BREAK_LINK, f"a link to record {scope.first - 1}",
                f"no record {scope.first - 1}", 1)))
    # The head is re-read in the records' own snapshot: the one from plan() is older, and a
    # running daemon may have appended since.
    head, rows = reader.read_chain_rows(tenant, scope.first, scope.last)
    task = dataclasses.replace(task, head=head)
    tree = task.checkpoints.start() if task.checkpoints is not None else None
    if tree is not None:
        rows = tree.feed(rows, itemgetter(RECORD_HASH))
    if progress is not None:
        rows = _counted(rows, progress)
    result = verify_rows(
        tenant, rows, start_sequence=scope.first, expected_previous_hash=link,
        expected_head=task.head if task.reaches_head else None,
    )
    if tree is not None:
        for _ in rows:  # past a chain break too: the tree covers every stored hash
            pass
    if result.valid and not task.reaches_head and result.last_sequence != scope.last:
        missing = scope.first if result.last_sequence is None else result.last_sequence + 1
        result = dataclasses.replace(result, first_break=ChainBreak(
            tenant, missing, BREAK_GAP, f"sequence {missing}", "end of records",
            result.records_checked + 1,
        ))
    report = tree.finish(head.last_sequence + 1) if tree is not None else None
    return TenantVerification(result, report)


def _timed(reader: AuditReader, task: TenantTask, progress: Progress | None) -> _TimedResult:
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    result = verify_tenant(reader, task, progress)
    return _TimedResult(result, started_at, round((time.monotonic() - clock) * 1000))


_worker_reader: AuditReader | None = None
_worker_progress: Any = None


def _start_worker(database_url: str, progress_queue: Any) -> None:
    global _worker_reader, _worker_progress
    engine = create_db_engine(database_url, pool_size=1, application_name="audit-service-verify")
    _worker_reader = AuditReader(engine)
    _worker_progress = progress_queue


def _verify_in_worker(task: TenantTask) -> _TimedResult:
    assert _worker_reader is not None, "worker not initialised"
    progress = _worker_progress.put if _worker_progress is not None else None
    return _timed(_worker_reader, task, progress)


def _drain(progress_queue: Any, progress: Progress | None) -> None:
    """Hand the workers' progress reports over to `progress`."""
    while progress is not None:
        try:
            progress(progress_queue.get_nowait())
        except queue.Empty:
            return


def _in_parallel(
    reader: AuditReader, tasks: list[TenantTask], jobs: int, progress: Progress | None
) -> Iterator[_TimedResult]:
    """Results in task order, while the largest chains run first for an even load."""
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue() if progress is not None else None
    database_url = reader.engine.url.render_as_string(hide_password=False)
    with ProcessPoolExecutor(
        min(jobs, len(tasks)), mp_context=context, initializer=_start_worker,
        initargs=(database_url, progress_queue),
    ) as pool:
        futures: dict[str, Future[_TimedResult]] = {
            task.tenant_id: pool.submit(_verify_in_worker, task)
            for task in sorted(tasks, key=lambda t: t.expected_records, reverse=True)
        }
        try:
            for task in tasks:
                future = futures[task.tenant_id]
                while not wait([future], timeout=PROGRESS_POLL_S).done:
                    _drain(progress_queue, progress)
                _drain(progress_queue, progress)
                yield future.result()
        finally:
            for future in futures.values():
                future.cancel()


def _record_run(engine: Engine, task: TenantTask, outcome: _TimedResult) -> None:
    result = outcome.result.chain
    errors = [] if result.first_break is None else [break_summary(result.first_break)]
    if outcome.result.checkpoints is not None:
        errors += [failure.summary() for failure in outcome.result.checkpoints.failures]
    with translated_errors("recording the run in audit_verification_log"), engine.begin() as db:
        db.execute(insert(AuditVerificationLog).values(
            tenant_id=task.tenant_id, from_sequence=task.scope.first,
            to_sequence=task.scope.last if task.scope.last is not None else result.last_sequence,
            records_checked=result.records_checked, valid=outcome.result.valid, errors=errors,
            started_at=outcome.started_at, duration_ms=outcome.duration_ms,
        ))


def verify_tasks(
    reader: AuditReader, tasks: list[TenantTask], *, jobs: int = 1,
    progress: Progress | None = None, record: bool = False,
) -> Iterator[TenantVerification]:
    """Yield one result per task, in task order; `record` logs each tenant run."""
    if jobs > 1 and len(tasks) > 1:
        outcomes = _in_parallel(reader, tasks, jobs, progress)
    else:
        outcomes = (_timed(reader, task, progress) for task in tasks)
    for task, outcome in zip(tasks, outcomes, strict=True):
        if record:
            _record_run(reader.engine, task, outcome)
        yield outcome.result


def verify_database(
    reader: AuditReader, tenant_id: str | None = None, *,
    scope: SequenceRange = WHOLE_CHAIN, jobs: int = 1, progress: Progress | None = None,
    record: bool = False,
) -> Iterator[VerificationResult]:
    """Verify every tenant's chain (or just `tenant_id`'s) over `scope`; see `plan` and
    `verify_tenant`."""
    tasks = plan(reader, tenant_id, scope)
    verifications = verify_tasks(reader, tasks, jobs=jobs, progress=progress, record=record)
    return (verification.chain for verification in verifications)
