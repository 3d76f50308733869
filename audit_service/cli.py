"""The `audit-service` command line: thin click wrappers over the modules that do the work.

Exit codes: 0 success, 1 integrity failure found, 2 usage, configuration or connection
error, 3 unexpected internal error (a bug: the traceback is logged).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from audit_service import __version__
from audit_service.errors import AuditServiceError

EXIT_INTERNAL_ERROR = 3
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

        return load_settings(self.config_path, overrides)


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
        poll_timeout_ms: int | None, health_host: str | None, health_port: int | None,
        log_level: str | None, log_format: str | None, max_batches: int | None,
        exit_when_idle: bool) -> None:
    """Run the daemon: consume, chain, store; stops cleanly on SIGTERM/SIGINT."""
    from audit_service.daemon import Daemon, RunLimits, StopSignal
    from audit_service.logs import configure_logging

    settings = ctx.settings(
        database_url=database_url, kafka_bootstrap_servers=bootstrap_servers,
        kafka_topic=topic, consumer_group=group, batch_size=batch_size,
        poll_timeout_ms=poll_timeout_ms, health_host=health_host, health_port=health_port,
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
    from audit_service.db import check_connection, create_db_engine
    from audit_service.migrations import head_revision, upgrade_to_head

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

    from audit_service.config import resolve_config_path
    from audit_service.consumer import topic_partitions
    from audit_service.db import check_connection, create_db_engine
    from audit_service.errors import ConnectionFailure
    from audit_service.migrations import ensure_schema_current, head_revision

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


@main.command()
@_database_option
@click.option("--tenant", help="Verify only this tenant (default: every tenant).")
@guarded
def verify(ctx: Context, database_url: str | None, tenant: str | None) -> None:
    """Recompute every hash and link from PostgreSQL; exit 1 on the first break."""
    from audit_service.db import check_connection, create_db_engine
    from audit_service.errors import ConfigurationError
    from audit_service.reader import AuditReader
    from audit_service.verification import verify_database

    settings = ctx.settings(database_url=database_url)
    engine = create_db_engine(settings.database_url)
    check_connection(engine)
    reader = AuditReader(engine)
    tenants = records = broken = 0
    for result in verify_database(reader, tenant):
        if tenant is not None and result.records_checked == 0 and result.valid:
            raise ConfigurationError(f"tenant {tenant!r} has no records")
        tenants += 1
        records += result.records_checked
        if result.valid:
            click.echo(f"{result.tenant_id}: OK, {result.records_checked} records, head "
                       f"{result.last_sequence} {(result.last_hash or '')[:16]}")
        else:
            broken += 1
            assert result.first_break is not None
            click.echo(f"{result.tenant_id}: BROKEN: {result.first_break.describe()}")
    engine.dispose()
    if broken:
        click.echo(f"verify: FAILED, {broken} of {tenants} chains broken", err=True)
        sys.exit(1)
    click.echo(f"verify: OK, {tenants} chains, {records} records intact")


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
    from audit_service.devserver import run_dev_stack

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
    from audit_service.samples import produce_events, sample_events, tenant_names

    settings = ctx.settings(kafka_bootstrap_servers=bootstrap_servers, kafka_topic=topic)
    names = tenant_names(tenants)
    sent = produce_events(settings.kafka_bootstrap_servers, settings.kafka_topic,
                          sample_events(names, count, seed=seed))
    click.echo(f"produced {sent} events for {tenants} tenants to {settings.kafka_topic}")
