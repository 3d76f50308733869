"""The URL forms of SPEC 6 migrate and connect to a real PostgreSQL through psycopg2,
libpq query parameters included."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from audit_service.config import load_settings
from audit_service.core.errors import ConnectionFailure
from audit_service.storage.engine import check_connection, create_db_engine
from audit_service.storage.migrations import ensure_schema_current, upgrade_to_head


def _with_scheme(url: str, scheme: str) -> str:
    """The fixture's URL (postgresql+psycopg2://...) as an operator would write it."""
    return f"{scheme}://{url.partition('://')[2]}"


def _libpq_query_form(url: str, **extra: str) -> str:
    """Everything but the database in libpq query parameters: postgresql:///db?host=...
    (host is a Unix socket directory for the embedded server, an address otherwise)."""
    parsed = make_url(url)
    params = {
        "host": parsed.host or str(parsed.query["host"]),
        "port": str(parsed.port or parsed.query.get("port", "5432")),
        "user": parsed.username or "postgres",
        **({"password": parsed.password} if parsed.password else {}),
        **extra,
    }
    query = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in params.items())
    return f"postgresql:///{parsed.database}?{query}"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg2"])
def test_each_accepted_scheme_migrates_an_empty_database(
    empty_database_url: str, scheme: str,
) -> None:
    settings = load_settings(
        overrides={"database_url": _with_scheme(empty_database_url, scheme)}, environ={})
    upgrade_to_head(settings.database_url)
    engine = create_db_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            assert connection.dialect.driver == "psycopg2"
            ensure_schema_current(connection)
    finally:
        engine.dispose()


def test_libpq_query_parameters_locate_the_server(database_url: str) -> None:
    """?host= (a socket directory or an address), ?port= and ?user= reach libpq."""
    settings = load_settings(overrides={"database_url": _libpq_query_form(database_url)},
                             environ={})
    engine = create_db_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            ensure_schema_current(connection)
            name = connection.execute(text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert name == make_url(database_url).database


@pytest.mark.parametrize(
    ("parameter", "refusal"),
    [
        ("sslmode=disable", None),
        ("sslmode=prefer", None),
        ("sslmode=bogus", 'invalid sslmode value: "bogus"'),
        ("target_session_attrs=read-write", None),
        ("target_session_attrs=read-only", "session is not read-only"),
    ],
)
def test_other_libpq_parameters_reach_libpq(
    database_url: str, parameter: str, refusal: str | None,
) -> None:
    """libpq itself acts on them: it refuses a value it does not know, or a primary server
    when asked for a read-only session (sslmode is ignored on a Unix socket, not its check)."""
    url = _with_scheme(database_url, "postgresql")
    url += ("&" if "?" in url else "?") + parameter
    engine = create_db_engine(load_settings(overrides={"database_url": url},
                                            environ={}).database_url)
    try:
        if refusal is None:
            check_connection(engine)
        else:
            with pytest.raises(ConnectionFailure, match=refusal):
                check_connection(engine)
    finally:
        engine.dispose()
