"""The `audit-service` command line: thin click wrappers over the modules that do the work.

Exit codes: 0 success, 1 integrity failure found, 2 usage, configuration or connection
error, 3 unexpected internal error (a bug: the traceback is logged).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from audit_service import __version__
from audit_service.core.errors import AuditServiceError

if TYPE_CHECKING:
    from audit_service.auditing.checkpoint_verify import CheckpointReport, SinkFile
    from audit_service.auditing.verification import TenantVerification
    from audit_service.core.chain import VerificationResult
    from audit_service.core.signed_note import VerifierKey
    from audit_service.storage.reader import SequenceRange

    Checkpoints = tuple[dict[str, SinkFile], tuple[VerifierKey, ...]]
    """The sink files as they stood at the start, and the verifier keys."""

EXIT_INTERNAL_ERROR = 3
FLAG_NAMES = {
    "database_url": "--database-url", "kafka_bootstrap_servers": "--bootstrap-servers",
    "kafka_topic": "--topic", "consumer_group": "--group", "batch_size": "--batch-size",
    "poll_timeout_ms": "--poll-timeout-ms", "validation_workers": "--validation-workers",
    "health_host": "--health-host", "health_port": "--health-port",
    "log_level": "--log-level", "log_format": "--log-format",
}
"""The flag behind each setting a command overrides, named when its value is invalid."""
CHECK_KAFKA_TIMEOUT_MS = 10_000
"""check-config gives up on an unreachable broker after this long."""

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("audit_service")


class Context:
    """Options shared by every command."""

    def __init__(self, config_path: str | None, verbose: bool):
        self.config_path = config_path
        self.verbose = verbose

    def settings(self, **overrides: Any) -> Any:
        from audit_service.config import load_settings

        return load_settings(self.config_path, overrides, flag_names=FLAG_NAMES)


def _fail(ctx: Context, exc: BaseException, code: int) -> None:
    if ctx.verbose:
        traceback.print_exception(exc)
    click.echo(f"audit-service: error: {exc}", err=True)
    sys.exit(code)


def guarded(func: F) -> F:
    """Turn service errors into one line and the documented exit code."""

    def wrapper(ctx: Context, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(ctx, *args, **kwargs)
        except AuditServiceError as exc:
            _fail(ctx, exc, exc.exit_code)
        except Exception as exc:  # a bug: keep the evidence, exit for systemd to restart
            log.exception("unexpected error")
            _fail(ctx, exc, EXIT_INTERNAL_ERROR)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return click.pass_obj(wrapper)  # type: ignore[return-value]


def _database_option(func: F) -> F:
    return click.option(
        "--database-url", envvar=None, help="SQLAlchemy URL (overrides AUDIT_DATABASE_URL)."
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="ini file with an [audit] section (default: $AUDIT_CONFIG or ./audit.ini).")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(__version__, prog_name="audit-service")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """Tamper-evident audit trail: Kafka audit.events -> per-tenant SHA-256 chains in PostgreSQL."""
    ctx.obj = Context(config_path, verbose)


@main.command()
@_database_option
@click.option("--bootstrap-servers", help="Kafka bootstrap servers, comma-separated.")
@click.option("--topic", help="Topic to consume (default audit.events).")
@click.option("--group", help="Consumer group (default aluskort.audit-service).")
@click.option("--batch-size", type=int,
              help="Max messages per poll, chained in one transaction (throughput knob).")
@click.option("--poll-timeout-ms", type=int,
              help="Max wait per poll; a quiet stream is committed within it (latency knob).")
@click.option("--validation-workers", type=int,
              help="Worker processes that validate batches (0: in the daemon's own thread).")
@click.option("--health-host", help="Address of the /health and /ready server.")
@click.option("--health-port", type=int, help="Port of the health server (0 disables it).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
              case_sensitive=False))
@click.option("--log-format", type=click.Choice(["auto", "json", "text"], case_sensitive=False),
              help="json: one object per line; text: for people; auto (default): json "
                   "unless stderr is a terminal.")
@click.option("--max-batches", type=int, help="Exit after this many committed batches.")
@click.option("--exit-when-idle", is_flag=True,
              help="Exit once every assigned partition is consumed to its end.")
@guarded
def run(ctx: Context, database_url: str | None, bootstrap_servers: str | None,
        topic: str | None, group: str | None, batch_size: int | None,
        poll_timeout_ms: int | None, validation_workers: int | None, health_host: str | None,
        health_port: int | None, log_level: str | None, log_format: str | None,
        max_batches: int | None, exit_when_idle: bool) -> None:
    """Run the daemon: consume, chain, store; stops cleanly on SIGTERM/SIGINT.

    \b
    Tuning knobs (see bench/README.md for measurements):
      --batch-size N       at most N messages per poll, chained in ONE transaction
                           (default 2000). Larger batches amortise locking, COPY and
                           commit (throughput); memory holds at most three batches.
      --poll-timeout-ms N  the longest a poll waits (default 500). Whatever a poll
                           returns is committed at once, so a quiet stream is stored
                           within about this long however large the batch size.
      --validation-workers N
                           processes that validate batches beside the daemon's GIL
                           (default 1, at most 3; 0 validates in the daemon itself).
                           One keeps two cores busy with PostgreSQL; more only help
                           with more cores to spare, and at most three batches are
                           ever in flight.
      in-flight batches    fixed at three: N+2 is polled while N+1 is validated and
                           N commits; transactions run one at a time in poll order
                           (a second would only queue on N's row locks).
    """
    from audit_service.ingest.daemon import Daemon, RunLimits, StopSignal
    from audit_service.ops.logs import configure_logging

    settings = ctx.settings(
        database_url=database_url, kafka_bootstrap_servers=bootstrap_servers,
        kafka_topic=topic, consumer_group=group, batch_size=batch_size,
        poll_timeout_ms=poll_timeout_ms, validation_workers=validation_workers,
        health_host=health_host, health_port=health_port,
        log_level=log_level, log_format=log_format,
    )
    configure_logging(settings.log_level, settings.log_format)
    stop = StopSignal()
    stop.install()
    Daemon(settings, stop).run(RunLimits(max_batches, exit_when_idle))


@main.command()
@_database_option
@guarded
def migrate(ctx: Context, database_url: str | None) -> None:
    """Upgrade the database schema to the latest revision (safe to repeat)."""
    from audit_service.storage.engine import check_connection, create_db_engine
    from audit_service.storage.migrations import head_revision, upgrade_to_head

    settings = ctx.settings(database_url=database_url)
    engine = create_db_engine(settings.database_url)
    check_connection(engine)
    engine.dispose()
    upgrade_to_head(settings.database_url)
    click.echo(f"database {settings.redacted_database_url} is at revision {head_revision()}")


@main.command("check-config")
@_database_option
@click.option("--bootstrap-servers", help="Kafka bootstrap servers, comma-separated.")
@guarded
def check_config(ctx: Context, database_url: str | None, bootstrap_servers: str | None) -> None:
    """Validate the configuration, print it (password masked), test PostgreSQL and Kafka."""
    import os

    from audit_service.broker.topic import topic_partitions
    from audit_service.config import resolve_config_path
    from audit_service.core.errors import ConnectionFailure
    from audit_service.storage.engine import check_connection, create_db_engine
    from audit_service.storage.migrations import ensure_schema_current, head_revision

    settings = ctx.settings(database_url=database_url, kafka_bootstrap_servers=bootstrap_servers)
    config_file = resolve_config_path(ctx.config_path, os.environ)
    click.echo(f"configuration (file: {config_file or 'none'}, then AUDIT_* variables, flags):")
    for name, value in settings.redacted_values().items():
        click.echo(f"  {name} = {value}")
    failed = []
    engine = create_db_engine(settings.database_url)
    try:
        check_connection(engine)
        with engine.connect() as connection:
            ensure_schema_current(connection)
        click.echo(f"database: OK, schema at revision {head_revision()}")
    except AuditServiceError as exc:
        click.echo(f"database: FAILED: {exc}")
        failed.append("database")
    finally:
        engine.dispose()
    try:
        partitions = topic_partitions(settings, CHECK_KAFKA_TIMEOUT_MS)
        if partitions:
            click.echo(f"kafka: OK, topic {settings.kafka_topic} has {len(partitions)} partitions")
        else:
            click.echo(f"kafka: FAILED: topic {settings.kafka_topic} does not exist")
            failed.append("kafka")
    except AuditServiceError as exc:
        click.echo(f"kafka: FAILED: {exc}")
        failed.append("kafka")
    if failed:
        raise ConnectionFailure(f"check-config: {' and '.join(failed)} check failed")
    click.echo("check-config: OK")


def _hex_hash(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (len(value) != 64 or set(value) - set("0123456789abcdef")):
        raise click.BadParameter("expected a record_hash: 64 lowercase hexadecimal characters")
    return value


@contextmanager
def _reader(ctx: Context, database_url: str | None) -> Iterator[Any]:
    """An AuditReader on the configured database, checked reachable, disposed afterwards."""
    from audit_service.storage.engine import check_connection, create_db_engine
    from audit_service.storage.reader import AuditReader

    settings = ctx.settings(database_url=database_url)
    engine = create_db_engine(settings.database_url)
    try:
        check_connection(engine)
        yield AuditReader(engine)
    finally:
        engine.dispose()


@contextmanager
def _progress_bar(total: int) -> Iterator[Any]:
    """A records bar on stderr when it is a terminal; None otherwise (logs, pipes, CI)."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit=" records", unit_scale=True, file=sys.stderr,
              leave=False, dynamic_ncols=True) as bar:
        yield bar


def _result_json(result: Any, checkpoints: CheckpointReport | None = None) -> dict[str, Any]:
    from audit_service.auditing.export_verify import break_summary

    report = {
        "tenant_id": result.tenant_id, "valid": result.valid,
        "records_checked": result.records_checked, "first_sequence": result.first_sequence,
        "last_sequence": result.last_sequence, "last_hash": result.last_hash,
        "break": None if result.first_break is None else break_summary(result.first_break),
    }
    if checkpoints is not None:
        report["valid"] = result.valid and checkpoints.valid
        report["checkpoints"] = checkpoints.as_json()
    return report


def _problems(result: VerificationResult | None,
              checkpoints: CheckpointReport | None) -> str | None:
    """The first thing wrong with a tenant, and how many more, in one line; None if nothing."""
    problems = [] if result is None or result.first_break is None else [
        result.first_break.describe()]
    more = 0
    if checkpoints is not None:
        problems += [failure.describe() for failure in checkpoints.failures]
        more = checkpoints.more_failures
    if not problems:
        return None
    more += len(problems) - 1
    return problems[0] + (f" (and {more} more; --json lists them)" if more else "")


def _file_line(path: str, result: VerificationResult,
               checkpoints: CheckpointReport | None = None) -> str:
    from audit_service.core.chain import BREAK_HEAD

    problem = _problems(result, checkpoints)
    if problem is not None:
        where = ("" if result.first_break is None
                 else " at the end" if result.first_break.kind == BREAK_HEAD
                 else f" at line {result.first_break.position}")
        return f"{path}: BROKEN{where}: {problem}"
    line = (f"{path}: OK, tenant {result.tenant_id}, {result.records_checked} records, "
            f"sequences {result.first_sequence}..{result.last_sequence}, "
            f"last record_hash {result.last_hash}")
    return line if checkpoints is None else f"{line}, {checkpoints.describe()}"


def _no_checkpoints_note(reports: list[CheckpointReport]) -> None:
    new = [r.tenant_id for r in reports if r.valid and not r.checkpoints]
    if new:
        click.echo(f"note: {len(new)} tenant{'s have' if len(new) != 1 else ' has'} no "
                   f"checkpoints in the sink (new, or its sink file is missing): "
                   f"{', '.join(new[:10])}{' ...' if len(new) > 10 else ''}", err=True)


def _verify_files(files: tuple[str, ...], expect_previous: str | None,
                  expect_head: str | None, as_json: bool) -> None:
    """Offline: no configuration is read and no database is contacted."""
    from audit_service.auditing.export_verify import verify_export_file

    started = time.monotonic()
    reports, records, broken = [], 0, 0
    for path in files:
        result = verify_export_file(path, expect_previous=expect_previous,
                                    expect_head=expect_head)
        records += result.records_checked
        reports.append({"file": path, **_result_json(result)})
        if result.first_break is not None:
            broken += 1
        if not as_json:
            click.echo(_file_line(path, result))
    seconds = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({"ok": not broken, "files": reports, "records": records,
                               "broken": broken, "duration_s": round(seconds, 3)}, indent=2))
    elif broken:
        click.echo(f"verify: FAILED, {broken} of {len(files)} files broken", err=True)
    else:
        click.echo(f"verify: OK, {len(files)} file{'s' if len(files) != 1 else ''}, "
                   f"{records} records intact in {seconds:.1f}s")
        if expect_previous is None and any(r["first_sequence"] for r in reports):
            click.echo("note: without --expect-previous, records before the first line are "
                       "not checked (pass 64 zeros to insist on a complete chain)", err=True)
        if expect_head is None:
            click.echo("note: only --expect-head (a record_hash you trust) proves that no "
                       "records were cut off the end", err=True)
    if broken:
        sys.exit(1)


def _verify_files_with_checkpoints(files: tuple[str, ...], checkpoints: Checkpoints,
                                   expect_head: str | None, as_json: bool) -> None:
    """Offline, like _verify_files; every export must be complete, and the sink files of
    tenants without an export are checked line by line."""
    from audit_service.auditing.checkpoint_verify import TreeCheck
    from audit_service.auditing.export_verify import verify_export_with_checkpoints

    sinks, verifiers = checkpoints
    started = time.monotonic()
    reports, records, broken, trees = [], 0, 0, []
    for path in files:
        result, tree = verify_export_with_checkpoints(path, sinks, verifiers,
                                                      expect_head=expect_head)
        records += result.records_checked
        reports.append({"file": path, **_result_json(result, tree)})
        trees += [tree] if tree is not None else []
        if not result.valid or (tree is not None and not tree.valid):
            broken += 1
        if not as_json:
            click.echo(_file_line(path, result, tree))
    exported = {tree.tenant_id for tree in trees}
    unexported = [TreeCheck(tenant, sink, verifiers).finish(None)
                  for tenant, sink in sorted(sinks.items()) if tenant not in exported]
    for report in unexported:
        broken += not report.valid
        if not as_json:
            problem = _problems(None, report)
            click.echo(f"{report.file}: {'BROKEN: ' + problem if problem else report.describe()}")
    seconds = time.monotonic() - started
    checked = sum(tree.verified for tree in trees)
    if as_json:
        click.echo(json.dumps({
            "ok": not broken, "files": reports, "records": records, "broken": broken,
            "checkpoints_verified": checked,
            "sink_files_without_export": [report.as_json() for report in unexported],
            "duration_s": round(seconds, 3)}, indent=2))
    elif broken:
        click.echo(f"verify: FAILED, {broken} of {len(files) + len(unexported)} files broken",
                   err=True)
    else:
        click.echo(f"verify: OK, {len(files)} file{'s' if len(files) != 1 else ''}, "
                   f"{records} records intact, {checked} checkpoints verified in "
                   f"{seconds:.1f}s")
        _no_checkpoints_note(trees)
    if broken:
        sys.exit(1)


def _tenant_line(verification: TenantVerification, scope: SequenceRange) -> str:
    from audit_service.storage.reader import WHOLE_CHAIN

    result, checkpoints = verification.chain, verification.checkpoints
    problem = _problems(result, checkpoints)
    if problem is not None:
        return f"{result.tenant_id}: BROKEN: {problem}"
    if scope == WHOLE_CHAIN:
        line = (f"{result.tenant_id}: OK, {result.records_checked} records, head "
                f"{result.last_sequence} {(result.last_hash or '')[:16]}")
    else:
        line = (f"{result.tenant_id}: OK, {result.records_checked} records, "
                f"sequences {result.first_sequence}..{result.last_sequence}")
    return line if checkpoints is None else f"{line}, {checkpoints.describe()}"


def _verify_database(ctx: Context, database_url: str | None, tenant: str | None,
                     from_seq: int, to_seq: int | None, jobs: int, as_json: bool,
                     checkpoints: Checkpoints | None = None) -> None:
    from audit_service.auditing.verification import plan, plan_with_checkpoints, verify_tasks
    from audit_service.core.errors import ConfigurationError
    from audit_service.storage.reader import WHOLE_CHAIN, SequenceRange

    scope = SequenceRange(from_seq, to_seq)
    started = time.monotonic()
    reports, records, broken, trees = [], 0, 0, []
    with _reader(ctx, database_url) as reader:
        tasks = (plan(reader, tenant, scope) if checkpoints is None
                 else plan_with_checkpoints(reader, *checkpoints, tenant_id=tenant))
        if tenant is not None and not tasks:
            where = "" if scope == WHOLE_CHAIN else f" in {scope.describe()}"
            raise ConfigurationError(f"tenant {tenant!r} has no records{where}")
        record = reader.can_record_verifications()
        if not record:
            click.echo("note: this login may not write audit_verification_log (a read-only "
                       "auditor): the run is not recorded", err=True)
        with _progress_bar(sum(task.expected_records for task in tasks)) as bar:
            echo = bar.write if bar is not None else click.echo
            progress = bar.update if bar is not None else None
            for verification in verify_tasks(reader, tasks, jobs=jobs, progress=progress,
                                             record=record):
                result = verification.chain
                records += result.records_checked
                reports.append(_result_json(result, verification.checkpoints))
                if verification.checkpoints is not None:
                    trees.append(verification.checkpoints)
                if not verification.valid:
                    broken += 1
                if not as_json:
                    echo(_tenant_line(verification, scope))
    seconds = time.monotonic() - started
    checked = sum(tree.verified for tree in trees)
    if as_json:
        summary = {
            "ok": not broken, "chains": len(reports), "broken": broken, "records": records,
            "duration_s": round(seconds, 3), "records_per_s": round(records / seconds),
            "tenants": reports,
        }
        if checkpoints is not None:
            summary["checkpoints_verified"] = checked
        click.echo(json.dumps(summary, indent=2))
    elif broken:
        click.echo(f"verify: FAILED, {broken} of {len(reports)} chains broken", err=True)
    else:
        verified = "" if checkpoints is None else f", {checked} checkpoints verified"
        click.echo(f"verify: OK, {len(reports)} chain{'s' if len(reports) != 1 else ''}, "
                   f"{records} records intact{verified} in {seconds:.1f}s "
                   f"({records / seconds:,.0f} records/s)")
        _no_checkpoints_note(trees)
    if broken:
        sys.exit(1)


def _checkpoint_inputs(path: Path | None, public_keys: tuple[str, ...]) -> Checkpoints | None:
    """--checkpoints and --public-key, loaded: the keys, and the sink files' sizes now,
    before any record is read."""
    from audit_service.auditing.checkpoint_verify import load_verifiers, sink_files
    from audit_service.core.errors import ConfigurationError

    if path is None:
        if public_keys:
            raise ConfigurationError("--public-key needs --checkpoints")
        return None
    if not public_keys:
        raise ConfigurationError(
            "--checkpoints needs --public-key FILE (the signer's NAME.pub; repeat for old keys)")
    verifiers = load_verifiers(public_keys)
    return sink_files(path), verifiers


@main.command()
@_database_option
@click.option("--tenant", help="Verify only this tenant (default: every tenant).")
@click.option("--from-seq", type=click.IntRange(min=0), default=0,
              help="First sequence to verify; it must link to its stored predecessor.")
@click.option("--to-seq", type=click.IntRange(min=0),
              help="Last sequence to verify (default: through the recorded head).")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Verify this many tenants at once, in separate processes.")
@click.option("--file", "files", multiple=True,
              type=click.Path(dir_okay=False, allow_dash=True),
              help="Verify an export offline instead (no database, no configuration); "
                   "repeatable; - reads stdin.")
@click.option("--expect-previous", callback=_hex_hash, metavar="HASH",
              help="With --file: the record_hash the first record must link to.")
@click.option("--expect-head", callback=_hex_hash, metavar="HASH",
              help="With --file: the record_hash the last record must have.")
@click.option("--checkpoints", "checkpoint_path", metavar="PATH",
              type=click.Path(path_type=Path),
              help="Also check signed checkpoints: a sink directory (its "
                   "checkpoints-*.jsonl) or one tenant's file.")
@click.option("--public-key", "public_keys", multiple=True, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="With --checkpoints: a verifier key file (NAME.pub from keygen); repeat "
                   "it for keys rotated out.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary.")
@guarded
def verify(ctx: Context, database_url: str | None, tenant: str | None, from_seq: int,
           to_seq: int | None, jobs: int, files: tuple[str, ...],
           expect_previous: str | None, expect_head: str | None,
           checkpoint_path: Path | None, public_keys: tuple[str, ...], as_json: bool) -> None:
    """Recompute every hash and link, from PostgreSQL or (--file) an export; exit 1 on a break.

    From PostgreSQL each tenant's recorded head must be its last record, and every tenant
    run is recorded in audit_verification_log.

    With --checkpoints, every signed checkpoint must be signed by a --public-key, name its
    tenant, and have the root of that many records, and no head may be behind its newest
    checkpoint: that catches a chain rewritten and rehashed, or cut short, which the chain
    alone cannot. A tenant with no checkpoints is reported, not failed.
    """
    from audit_service.core.chain import GENESIS_PREVIOUS_HASH
    from audit_service.core.errors import ConfigurationError

    if to_seq is not None and to_seq < from_seq:
        raise ConfigurationError("--to-seq must not be below --from-seq")
    if checkpoint_path is not None and (from_seq or to_seq is not None):
        raise ConfigurationError("--checkpoints checks whole chains: drop --from-seq/--to-seq")
    if checkpoint_path is not None and expect_previous not in (None, GENESIS_PREVIOUS_HASH):
        raise ConfigurationError(
            "--checkpoints needs complete exports (from genesis): drop --expect-previous")
    if not files:
        if expect_previous or expect_head:
            raise ConfigurationError("--expect-previous and --expect-head need --file")
        checkpoints = _checkpoint_inputs(checkpoint_path, public_keys)
        _verify_database(ctx, database_url, tenant, from_seq, to_seq, jobs, as_json,
                         checkpoints)
        return
    database_only = {"--database-url": database_url, "--tenant": tenant,
                     "--from-seq": from_seq or None, "--to-seq": to_seq,
                     "--jobs": jobs if jobs != 1 else None}
    given = [name for name, value in database_only.items() if value is not None]
    if given:
        raise ConfigurationError(f"--file verifies an export as it is; drop {', '.join(given)}")
    if len(files) > 1 and (expect_previous or expect_head):
        raise ConfigurationError("--expect-previous and --expect-head need a single --file")
    checkpoints = _checkpoint_inputs(checkpoint_path, public_keys)
    if checkpoints is None:
        _verify_files(files, expect_previous, expect_head, as_json)
    else:
        _verify_files_with_checkpoints(files, checkpoints, expect_head, as_json)


@main.command("verify-proof")
@click.argument("proof_path", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--public-key", "public_keys", multiple=True, required=True, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="A verifier key file (NAME.pub from keygen); repeat it for keys rotated "
                   "out.")
@guarded
def verify_proof(ctx: Context, proof_path: str, public_keys: tuple[str, ...]) -> None:
    """Check an inclusion or consistency proof file from `prove`, offline; exit 1 if invalid.

    No database and no configuration: the signatures of its checkpoints (by a --public-key),
    that they name the file's tenant and sizes, the record's own hash, and the RFC 9162
    proof against the signed roots. FILE may be - for stdin.
    """
    from audit_service.auditing.checkpoint_verify import load_verifiers
    from audit_service.core.errors import ConfigurationError
    from audit_service.core.merkle import ProofError
    from audit_service.core.proof_file import ProofFileError, parse_proof_file

    verifiers = load_verifiers(public_keys)
    try:
        data = sys.stdin.buffer.read() if proof_path == "-" else Path(proof_path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {proof_path}: {exc.strerror}") from None
    try:
        click.echo(f"valid: {parse_proof_file(data).verify(verifiers)}")
    except ProofFileError as exc:
        raise ConfigurationError(f"{proof_path} is not a proof file: {exc}") from None
    except ProofError as exc:
        click.echo(f"invalid: {exc}")
        sys.exit(1)


@main.command()
@_database_option
@click.option("--tenant", help="The tenant whose chain to export.")
@click.option("--all", "all_tenants", is_flag=True,
              help="Every tenant's whole chain, one file each (TENANT.jsonl), into --output-dir.")
@click.option("--from-seq", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--to-seq", type=click.IntRange(min=0), help="Default: the last record.")
@click.option("--output", "-o", help="File to create (never overwritten); - for stdout. "
                                     "Default: TENANT.jsonl")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --all: the directory for the files (created if missing).")
@guarded
def export(ctx: Context, database_url: str | None, tenant: str | None, all_tenants: bool,
           from_seq: int, to_seq: int | None, output: str | None,
           output_dir: Path | None) -> None:
    """Write a tenant's records as JSON Lines, exactly as hashed, for offline `verify --file`."""
    from audit_service.core.errors import ConfigurationError

    if not all_tenants:
        if tenant is None:
            raise ConfigurationError("give --tenant T, or --all --output-dir DIR")
        if output_dir is not None:
            raise ConfigurationError("--output-dir goes with --all; use --output for one tenant")
        _export_tenant(ctx, database_url, tenant, from_seq, to_seq, output)
        return
    given = [flag for flag, value in (("--tenant", tenant), ("--from-seq", from_seq or None),
                                      ("--to-seq", to_seq), ("--output", output))
             if value is not None]
    if given or output_dir is None:
        raise ConfigurationError("--all exports whole chains into --output-dir DIR"
                                 + (f"; drop {', '.join(given)}" if given else ""))
    _export_all(ctx, database_url, output_dir)


def _export_tenant(ctx: Context, database_url: str | None, tenant: str, from_seq: int,
                   to_seq: int | None, output: str | None) -> None:
    from audit_service.auditing.export import EXPORT_SUFFIX, export_tenant
    from audit_service.core.errors import ConfigurationError
    from audit_service.storage.reader import SequenceRange

    if to_seq is not None and to_seq < from_seq:
        raise ConfigurationError("--to-seq must not be below --from-seq")
    target = output or f"{tenant}{EXPORT_SUFFIX}"
    with _reader(ctx, database_url) as reader:
        summary = export_tenant(reader, tenant, target, SequenceRange(from_seq, to_seq))
        predecessor = reader.record_hash_at(tenant, from_seq - 1) if from_seq else None
    anchor = f" --expect-previous {predecessor}" if predecessor else ""
    click.echo(
        f"exported {summary.records} records of {tenant} (sequences {summary.first_sequence}.."
        f"{summary.last_sequence}) to {'stdout' if target == '-' else target}\n"
        f"last record_hash {summary.last_hash}\n"
        f"check it offline: audit-service verify --file {target}{anchor} "
        f"--expect-head {summary.last_hash}", err=True)


def _export_all(ctx: Context, database_url: str | None, directory: Path) -> None:
    from audit_service.auditing.export import EXPORT_SUFFIX, ExportSummary, export_all

    def exported(summary: ExportSummary, path: Path) -> None:
        click.echo(f"exported {summary.records} records of {summary.tenant_id} to {path}, "
                   f"last record_hash {summary.last_hash}", err=True)

    with _reader(ctx, database_url) as reader:
        summaries = export_all(reader, directory, exported)
    click.echo(
        f"exported {sum(s.records for s in summaries)} records of {len(summaries)} tenants "
        f"to {directory}\ncheck each offline: audit-service verify --file "
        f"{directory / ('TENANT' + EXPORT_SUFFIX)} --expect-head HASH (its record_hash above)",
        err=True)


@main.command()
@_database_option
@click.option("--bootstrap-servers", help="Kafka bootstrap servers, comma-separated.")
@click.option("--topic", help="Topic (default: the configured one).")
@click.option("--group", help="Consumer group (default: the configured one).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@guarded
def status(ctx: Context, database_url: str | None, bootstrap_servers: str | None,
           topic: str | None, group: str | None, as_json: bool) -> None:
    """Per tenant and per partition: where the chains, offsets, lag and verification stand."""
    from audit_service.auditing.status import collect_status, render_status

    settings = ctx.settings(database_url=database_url, kafka_bootstrap_servers=bootstrap_servers,
                            kafka_topic=topic, consumer_group=group)
    with _reader(ctx, settings.database_url) as reader:
        report = collect_status(settings, reader)
    click.echo(json.dumps(report.as_json(), indent=2) if as_json else render_status(report))


@main.command()
@_database_option
@click.option("--bootstrap-servers", help="Kafka bootstrap servers, comma-separated.")
@click.option("--topic", help="Topic (default: the configured one).")
@click.option("--group", help="Consumer group whose stored offsets and rejects to check "
                              "(default: the configured one; it is never joined).")
@click.option("--partition", "partitions", type=click.IntRange(min=0), multiple=True,
              help="Reconcile only this partition (repeatable; default: all).")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Reconcile this many partitions at once, in separate processes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@guarded
def reconcile(ctx: Context, database_url: str | None, bootstrap_servers: str | None,
              topic: str | None, group: str | None, partitions: tuple[int, ...], jobs: int,
              as_json: bool) -> None:
    """Account for every message on the topic in the store; exit 1 on a finding.

    Each partition is read from the start of the broker's log up to the offset stored in
    PostgreSQL, by a client that joins no group. Every message must be the record stored
    with its partition and offset (same producer content), the rejects row there (same raw
    bytes), or a redelivery of an audit_id chained with the same content. Stored rows no
    message accounts for are findings too; offsets the broker no longer holds (retention)
    and messages beyond the stored offset (pending) are reported, not judged. The run is
    recorded in audit_reconciliation_log.
    """
    from audit_service.auditing.reconcile import render_summary, run_and_record, summary_line
    from audit_service.core.errors import ConfigurationError
    from audit_service.storage.migrations import ensure_schema_current

    settings = ctx.settings(database_url=database_url, kafka_bootstrap_servers=bootstrap_servers,
                            kafka_topic=topic, consumer_group=group)
    with _reader(ctx, settings.database_url) as reader:
        with reader.engine.connect() as connection:
            ensure_schema_current(connection)
        if not reader.can_read_rejected_payloads():
            raise ConfigurationError(
                "this login may not read the raw bytes in audit_rejected_events, which "
                "reconcile compares: run it as a member of audit_reader")
        record = reader.can_record_reconciliations()
        if not record:
            click.echo("note: this login may not write audit_reconciliation_log: the run is "
                       "not recorded", err=True)
        on_finding = None if as_json else (lambda finding: click.echo(finding.describe()))
        report = run_and_record(settings, reader, sorted(set(partitions)), on_finding,
                                jobs=jobs, record=record)
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        for line in render_summary(report):
            click.echo(line)
        click.echo(summary_line(report), err=not report.ok)
    if not report.ok:
        sys.exit(1)


@main.group()
def rejects() -> None:
    """Browse quarantined messages (audit_rejected_events)."""


@rejects.command("list")
@_database_option
@click.option("--tenant", help="Only messages whose payload named this tenant.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@guarded
def rejects_list(ctx: Context, database_url: str | None, tenant: str | None, limit: int,
                 as_json: bool) -> None:
    """The newest rejected messages: id, time, coordinates, tenant, size and reason."""
    from audit_service.auditing.rejects import event_json, render_list

    with _reader(ctx, database_url) as reader:
        events = reader.rejections(limit, tenant)
    if as_json:
        for event in events:
            click.echo(json.dumps(event_json(event, with_bytes=False)))
    else:
        click.echo(render_list(events))


@rejects.command("show")
@_database_option
@click.argument("rejection_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON, raw bytes in base64.")
@guarded
def rejects_show(ctx: Context, database_url: str | None, rejection_id: int,
                 as_json: bool) -> None:
    """One rejected message in full: reason, coordinates and its raw bytes, escaped."""
    from audit_service.auditing.rejects import event_json, render_event
    from audit_service.core.errors import ConfigurationError

    with _reader(ctx, database_url) as reader:
        event = reader.rejection(rejection_id)
    if event is None:
        raise ConfigurationError(f"no rejected event with id {rejection_id}")
    click.echo(json.dumps(event_json(event, with_bytes=True), indent=2) if as_json
               else render_event(event))


@main.command()
@click.option("--name", required=True,
              help="Key name, in every signature line (and, by default, every origin).")
@click.option("--out", "directory", required=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory for NAME.key (the secret, mode 0600) and NAME.pub.")
@guarded
def keygen(ctx: Context, name: str, directory: Path) -> None:
    """Make an Ed25519 checkpoint signing key: DIR/NAME.key (secret) and DIR/NAME.pub.

    Point checkpoint_key_file at NAME.key; give NAME.pub to whoever verifies. Neither file
    is ever overwritten.
    """
    from audit_service.ingest.checkpointing import write_key_pair

    key_path, pub_path, verifier = write_key_pair(name, directory)
    click.echo(f"signer key: {key_path} (mode 0600, secret: set checkpoint_key_file to it)")
    click.echo(f"verifier key: {pub_path}")
    click.echo(verifier)


@main.group()
def checkpoints() -> None:
    """Signed checkpoints (audit_checkpoints and the checkpoint_dir sink)."""


@checkpoints.command("list")
@_database_option
@click.option("--tenant", help="Only this tenant's checkpoints.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, the note included.")
@guarded
def checkpoints_list(ctx: Context, database_url: str | None, tenant: str | None,
                     as_json: bool) -> None:
    """The checkpoints in audit_checkpoints: tenant, tree size, root, key, when signed."""
    from audit_service.auditing.checkpoints import checkpoint_json, render_checkpoints

    with _reader(ctx, database_url) as reader:
        rows = reader.checkpoints(tenant)
    if as_json:
        for row in rows:
            click.echo(json.dumps(checkpoint_json(row)))
    else:
        click.echo(render_checkpoints(rows))


@checkpoints.command("publish")
@_database_option
@guarded
def checkpoints_publish(ctx: Context, database_url: str | None) -> None:
    """Append to the checkpoint_dir sink what audit_checkpoints holds and the sink lacks
    (safe beside a running daemon: the sink's files are locked while appended)."""
    import os

    from audit_service.core.errors import ConfigurationError
    from audit_service.storage.checkpoint_sink import DirectorySink, publish_missing

    settings = ctx.settings(database_url=database_url)
    if not settings.checkpoint_dir:
        raise ConfigurationError("checkpoint_dir is not set: nowhere to publish to")
    directory = Path(settings.checkpoint_dir)
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigurationError(f"checkpoint_dir {directory} is not a writable directory")
    with _reader(ctx, settings.database_url) as reader:
        publication = publish_missing(reader, DirectorySink(directory),
                                      reader.checkpoint_sizes())
    click.echo(f"appended {publication.appended} checkpoint"
               f"{'s' if publication.appended != 1 else ''} to {directory}")
    if publication.failures:
        tenant, reason = sorted(publication.failures.items())[0]
        raise ConfigurationError(
            f"{len(publication.failures)} tenant(s) not published, first {tenant!r}: {reason}")


@main.group()
def prove() -> None:
    """Inclusion and consistency proofs (RFC 9162) against the signed checkpoints, as JSON
    for `verify-proof`; read-only (the audit_reader role is enough)."""


@prove.command("inclusion")
@_database_option
@click.option("--tenant", required=True, help="The tenant whose tree holds the record.")
@click.option("--sequence", type=click.IntRange(min=0), required=True,
              help="The record's sequence_number (its leaf index).")
@click.option("--tree-size", type=click.IntRange(min=1),
              help="A checkpointed tree size (default: the newest checkpoint).")
@click.option("--output", "-o", help="File to create (never overwritten); default stdout.")
@guarded
def prove_inclusion(ctx: Context, database_url: str | None, tenant: str, sequence: int,
                    tree_size: int | None, output: str | None) -> None:
    """Prove that one record is in the tree a checkpoint signed: the record, its
    inclusion proof and the checkpoint. Exit 1 if the store no longer matches it."""
    from audit_service.auditing.proofs import prove_inclusion, write_proof

    with _reader(ctx, database_url) as reader:
        document = prove_inclusion(reader.engine, tenant, sequence, tree_size)
    click.echo(write_proof(document, output), nl=False)


@prove.command("consistency")
@_database_option
@click.option("--tenant", required=True, help="The tenant whose tree to prove.")
@click.option("--from-size", type=click.IntRange(min=1), required=True,
              help="The older checkpointed tree size.")
@click.option("--to-size", type=click.IntRange(min=1),
              help="The newer checkpointed tree size (default: the newest checkpoint).")
@click.option("--output", "-o", help="File to create (never overwritten); default stdout.")
@guarded
def prove_consistency(ctx: Context, database_url: str | None, tenant: str, from_size: int,
                      to_size: int | None, output: str | None) -> None:
    """Prove that the newer checkpoint's tree extends the older one's: nothing rewritten,
    only records appended. Exit 1 if the store no longer matches them."""
    from audit_service.auditing.proofs import prove_consistency, write_proof

    with _reader(ctx, database_url) as reader:
        document = prove_consistency(reader.engine, tenant, from_size, to_size)
    click.echo(write_proof(document, output), nl=False)


@main.command()
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".audit-dev"), show_default=True,
              help="Where the embedded PostgreSQL keeps its data and logs go.")
@click.option("--tenants", type=int, default=3, show_default=True)
@click.option("--rate", type=float, default=20.0, show_default=True, help="Sample events/s.")
@click.option("--health-port", type=int, default=8040, show_default=True)
@click.option("--duration", type=float, help="Stop after this many seconds (default: Ctrl-C).")
@guarded
def dev(ctx: Context, state_dir: Path, tenants: int, rate: float, health_port: int,
        duration: float | None) -> None:
    """Local stack: embedded PostgreSQL + Tansu broker + the daemon + a sample producer."""
    from audit_service.dev.devserver import run_dev_stack

    sys.exit(run_dev_stack(state_dir, tenants, rate, health_port, duration, click.echo))


@main.command()
@click.option("--bootstrap-servers", help="Kafka bootstrap servers, comma-separated.")
@click.option("--topic", help="Topic to produce to (default: the configured topic).")
@click.option("--tenants", type=int, default=3, show_default=True)
@click.option("--count", type=int, default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@guarded
def produce(ctx: Context, bootstrap_servers: str | None, topic: str | None, tenants: int,
            count: int, seed: int) -> None:
    """Dev only: publish realistic sample events in the wire format."""
    from audit_service.dev.samples import produce_events, sample_events, tenant_names

    settings = ctx.settings(kafka_bootstrap_servers=bootstrap_servers, kafka_topic=topic)
    names = tenant_names(tenants)
    sent = produce_events(settings.kafka_bootstrap_servers, settings.kafka_topic,
                          sample_events(names, count, seed=seed))
    click.echo(f"produced {sent} events for {tenants} tenants to {settings.kafka_topic}")
