"""Engine creation and the translation of driver errors into the service's error tree.

This is the only module that knows psycopg2 error codes; callers see TransientError
(retry), RecordRefused (this row, not the database, is the problem) or
ConnectionFailure / AuditServiceError (give up).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import psycopg2
from sqlalchemy import Connection, Engine, Select, create_engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from audit_service.core.errors import AuditServiceError, ConnectionFailure, TransientError

CONNECT_TIMEOUT_S: Final = 5

_TRANSIENT_SQLSTATES: Final = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout)
    "57014",  # query_canceled (statement_timeout)
    "57P01",  # admin_shutdown (server restart, pg_terminate_backend)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up)
    "53300",  # too_many_connections
    "53200",  # out_of_memory
    "53100",  # disk_full
}
_TRANSIENT_CLASSES: Final = ("08",)  # connection exceptions
_ROW_CLASSES: Final = ("22", "23", "54")  # data exception, integrity, program limit


class RecordRefused(AuditServiceError):
    """PostgreSQL refused one row's content (not the database's state): quarantine the row."""


def create_db_engine(
    database_url: str, *, statement_timeout_ms: int = 0, lock_timeout_ms: int = 0,
    pool_size: int = 2,
    application_name: str = "audit-service",
) -> Engine:
    """An engine whose connections carry a name (for pg_stat_activity) and a timeout."""
    options = f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={lock_timeout_ms}"
    return create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": application_name,
            "options": options,
        },
    )


def _driver_error(exc: Exception) -> psycopg2.Error | None:
    """The psycopg2 error behind `exc` (raw cursors such as COPY raise it directly)."""
    if isinstance(exc, psycopg2.Error):
        return exc
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg2.Error):
        return exc.orig
    return None


def sqlstate(exc: Exception) -> str | None:
    """The SQLSTATE behind a driver error, None when the server never answered."""
    driver = _driver_error(exc)
    return driver.pgcode if driver is not None else None


def is_transient(exc: Exception) -> bool:
    """True when retrying the same work later can succeed."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    driver = _driver_error(exc)
    if driver is None:
        return isinstance(exc, DBAPIError)
    code = driver.pgcode
    if code is None:
        # No server answer at all: connection refused, reset or timed out.
        return isinstance(driver, psycopg2.OperationalError | psycopg2.InterfaceError)
    return code in _TRANSIENT_SQLSTATES or code.startswith(_TRANSIENT_CLASSES)


def is_row_specific(exc: Exception) -> bool:
    """True when the error is about the data of a row (too long, invalid, constraint)."""
    code = sqlstate(exc)
    return code is not None and code.startswith(_ROW_CLASSES)


def violated_constraint(exc: BaseException | None) -> str | None:
    """The name of the constraint a driver error violated, None for any other error."""
    driver = _driver_error(exc) if isinstance(exc, Exception) else None
    return driver.diag.constraint_name if driver is not None else None


def describe(exc: Exception) -> str:
    """One line, without SQL or parameters (which may hold event payloads)."""
    driver = _driver_error(exc)
    if driver is None:
        return type(exc).__name__
    lines = str(driver).strip().splitlines()
    first_line = lines[0] if lines else type(driver).__name__
    return f"{first_line} (SQLSTATE {driver.pgcode})" if driver.pgcode else first_line


@contextmanager
def translated_errors(what: str) -> Iterator[None]:
    """Re-raise driver errors as TransientError, RecordRefused or AuditServiceError."""
    try:
        yield
    except (SQLAlchemyError, psycopg2.Error) as exc:
        if is_transient(exc):
            raise TransientError(f"{what}: {describe(exc)}") from exc
        if is_row_specific(exc):
            raise RecordRefused(f"{what}: {describe(exc)}") from exc
        raise AuditServiceError(f"{what}: {describe(exc)}") from exc


_cursor_names = itertools.count()


def stream_rows(
    connection: Connection, statement: Select[Any], chunk_rows: int
) -> Iterator[tuple[Any, ...]]:
    """The rows of `statement` as the driver's plain tuples, from a server-side cursor in
    `connection`'s transaction, `chunk_rows` per round trip.

    For the millions of rows verify and export stream: SQLAlchemy's Row objects cost more
    per row than what those callers then do with it. Bind values must need no type
    processing by SQLAlchemy (plain ints and strings).
    """
    compiled = statement.compile(dialect=connection.dialect)
    driver_connection: Any = connection.connection.dbapi_connection
    cursor = driver_connection.cursor(name=f"audit_stream_{next(_cursor_names)}")
    try:
        cursor.itersize = chunk_rows
        cursor.execute(str(compiled), compiled.params)
        yield from cursor
    finally:
        cursor.close()


def check_connection(engine: Engine) -> None:
    """Raise ConnectionFailure (one clear line) unless the database answers."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        url = engine.url.render_as_string(hide_password=True)
        raise ConnectionFailure(f"cannot reach the database at {url}: {describe(exc)}") from exc
