"""Engine creation and the translation of driver errors into the service's error tree.

This is the only module that knows psycopg2 error codes; callers see TransientError
(retry), RecordRefused (this row, not the database, is the problem) or
ConnectionFailure / AuditServiceError (give up).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from audit_service.errors import AuditServiceError, ConnectionFailure, TransientError

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
    database_url: str, *, statement_timeout_ms: int = 0, pool_size: int = 2,
    application_name: str = "audit-service",
) -> Engine:
    """An engine whose connections carry a name (for pg_stat_activity) and a timeout."""
    options = f"-c statement_timeout={statement_timeout_ms}"
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


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "pgcode", None)


def is_transient(exc: SQLAlchemyError) -> bool:
    """True when retrying the same work later can succeed."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    code = _sqlstate(exc)
    if code is None:
        return True  # no server answer at all: connection refused, reset, timed out
    return code in _TRANSIENT_SQLSTATES or code.startswith(_TRANSIENT_CLASSES)


def is_row_specific(exc: SQLAlchemyError) -> bool:
    """True when the error is about the data of a row (too long, invalid, constraint)."""
    code = _sqlstate(exc) if isinstance(exc, DBAPIError) else None
    return code is not None and code.startswith(_ROW_CLASSES)


def describe(exc: SQLAlchemyError) -> str:
    """One line, without SQL or parameters (which may hold event payloads)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        first_line = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
        code = _sqlstate(exc)
        return f"{first_line} (SQLSTATE {code})" if code else first_line or type(exc.orig).__name__
    return type(exc).__name__


@contextmanager
def translated_errors(what: str) -> Iterator[None]:
    """Re-raise SQLAlchemy errors as TransientError, RecordRefused or AuditServiceError."""
    try:
        yield
    except SQLAlchemyError as exc:
        if is_transient(exc):
            raise TransientError(f"{what}: {describe(exc)}") from exc
        if is_row_specific(exc):
            raise RecordRefused(f"{what}: {describe(exc)}") from exc
        raise AuditServiceError(f"{what}: {describe(exc)}") from exc


def check_connection(engine: Engine) -> None:
    """Raise ConnectionFailure (one clear line) unless the database answers."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        url = engine.url.render_as_string(hide_password=True)
        raise ConnectionFailure(f"cannot reach the database at {url}: {describe(exc)}") from exc
