"""The database URLs operators write (SPEC 6) all run on psycopg2; anything else is refused
with one line that names the accepted forms and where the bad value came from."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from audit_service.cli import main
from audit_service.config import load_settings, normalise_database_url
from audit_service.core.errors import ConfigurationError
from audit_service.storage.engine import create_db_engine

PASSWORD = "s3cr3t-Pa55w0rd"
ACCEPTED_FORMS = "postgresql://, postgres:// or postgresql+psycopg2://"


@pytest.fixture(autouse=True)
def _no_default_ini(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./audit.ini and no AUDIT_* variables: only what a test supplies is read."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    for name in ("AUDIT_CONFIG", "AUDIT_DATABASE_URL", "AUDIT_DATABASE_PASSWORD",
                 "AUDIT_DATABASE_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("postgresql://audit@db.internal:5432/audit",
         "postgresql+psycopg2://audit@db.internal:5432/audit"),
        ("postgres://audit@db.internal/audit", "postgresql+psycopg2://audit@db.internal/audit"),
        ("postgresql+psycopg2://audit@db.internal/audit",
         "postgresql+psycopg2://audit@db.internal/audit"),
        ("PostgreSQL://audit@db.internal/audit", "postgresql+psycopg2://audit@db.internal/audit"),
        ("postgresql://audit@/audit?host=/run/postgresql",
         "postgresql+psycopg2://audit@/audit?host=/run/postgresql"),
        ("postgresql:///audit?host=%2Frun%2Fpostgresql",
         "postgresql+psycopg2:///audit?host=%2Frun%2Fpostgresql"),
        ("postgres://audit:p%40ss@db.internal:6543/audit?sslmode=require&connect_timeout=3",
         "postgresql+psycopg2://audit:p%40ss@db.internal:6543/audit"
         "?sslmode=require&connect_timeout=3"),
    ],
)
def test_accepted_forms_get_the_psycopg2_scheme_and_keep_the_rest(
    written: str, normalised: str,
) -> None:
    assert normalise_database_url(written) == normalised
    assert load_settings(overrides={"database_url": written}, environ={}).database_url \
        == normalised


@pytest.mark.parametrize(
    ("url", "connect_args"),
    [
        ("postgresql://audit@/audit?host=/run/postgresql",
         {"host": "/run/postgresql", "user": "audit", "dbname": "audit"}),
        ("postgres://audit@db.internal/audit?sslmode=require",
         {"host": "db.internal", "sslmode": "require", "user": "audit", "dbname": "audit"}),
        ("postgresql://audit:p%40ss@db.internal:6543/audit?sslmode=verify-full"
         "&sslrootcert=/etc/ssl/db.pem",
         {"host": "db.internal", "port": 6543, "password": "p@ss", "sslmode": "verify-full",
          "sslrootcert": "/etc/ssl/db.pem"}),
    ],
)
def test_engines_use_psycopg2_and_hand_libpq_parameters_to_it(
    url: str, connect_args: dict[str, object],
) -> None:
    """Whatever SQLAlchemy's default driver for postgresql:// is (psycopg 3 from 2.1)."""
    database_url = load_settings(overrides={"database_url": url}, environ={}).database_url
    engine = create_db_engine(database_url)
    try:
        assert engine.dialect.driver == "psycopg2"
        _args, kwargs = engine.dialect.create_connect_args(engine.url)
        assert kwargs.items() >= connect_args.items()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql+psycopg://audit@db/audit", "unsupported scheme postgresql+psycopg://"),
        ("postgresql+asyncpg://audit@db/audit", "unsupported scheme postgresql+asyncpg://"),
        ("postgresql+pg8000://audit@db/audit", "unsupported scheme postgresql+pg8000://"),
        ("mysql://audit@db/audit", "unsupported scheme mysql://"),
        ("sqlite:///audit.db", "unsupported scheme sqlite://"),
        ("db.internal:5432/audit", "not a database URL"),
        ("not a database url", "not a database URL"),
        ("", "not a database URL"),
        ("postgresql://audit@db:notaport/audit", "not a valid database URL"),
    ],
)
def test_other_schemes_and_drivers_are_refused_naming_the_accepted_forms(
    url: str, reason: str,
) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(overrides={"database_url": url}, environ={})
    message = str(info.value)
    assert message.startswith("invalid setting database_url (from override database_url): "
                              f"{reason}; use {ACCEPTED_FORMS}"), message
    assert "\n" not in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("url", [
    f"mysql://auditor:{PASSWORD}@db.internal/audit",
    f"auditor:{PASSWORD}@db.internal/audit",
    f"auditor:{PASSWORD}@db.internal://audit",
    f"postgresql://auditor:{PASSWORD}@db:notaport/audit",
])
def test_a_refused_url_never_shows_its_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(overrides={"database_url": url}, environ={})
    assert PASSWORD not in str(info.value)
    assert "db.internal" not in str(info.value)


BAD_URL = f"mysql://auditor:{PASSWORD}@db.internal/audit"


@pytest.mark.parametrize(
    ("where", "source"),
    [
        ("ini", "(from config file {ini}, [audit] database_url)"),
        ("env", "(from environment variable AUDIT_DATABASE_URL)"),
        ("flag", "(from command-line flag --database-url)"),
    ],
)
def test_the_cli_names_the_true_source_of_a_bad_url(
    tmp_path: Path, where: str, source: str,
) -> None:
    """Each layer overrides the one before (the lower ones hold a good URL), and the error
    blames the layer in effect. `migrate` fails on the configuration, before connecting."""
    good = "postgresql://audit@127.0.0.1:1/audit"
    ini = tmp_path / "audit.ini"
    ini.write_text(f"[audit]\ndatabase_url = {BAD_URL if where == 'ini' else good}\n")
    env = {} if where == "ini" else {"AUDIT_DATABASE_URL": BAD_URL if where == "env" else good}
    flag = ["--database-url", BAD_URL] if where == "flag" else []
    result = CliRunner().invoke(main, ["--config", str(ini), "migrate", *flag], env=env)
    assert result.exit_code == 2, result.output
    expected = (f"audit-service: error: invalid setting database_url {source.format(ini=ini)}: "
                f"unsupported scheme mysql://; use {ACCEPTED_FORMS}")
    assert result.output.startswith(expected), result.output
    assert result.output.count("\n") == 1, "one line, no traceback"
    assert PASSWORD not in result.output


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--config", "{tmp}/batch.ini", "run"], {},
         "invalid setting batch_size (from config file {tmp}/batch.ini, [audit] batch_size): "),
        (["run"], {"AUDIT_BATCH_SIZE": "0"},
         "invalid setting batch_size (from environment variable AUDIT_BATCH_SIZE): "),
        (["--config", "{tmp}/batch.ini", "run", "--batch-size", "0"], {"AUDIT_BATCH_SIZE": "5"},
         "invalid setting batch_size (from command-line flag --batch-size): "),
        (["run", "--topic", ""], {},
         "invalid setting kafka_topic (from command-line flag --topic): "),
        (["status", "--group", ""], {},
         "invalid setting consumer_group (from command-line flag --group): "),
        (["run"], {"AUDIT_CONFIG": "{tmp}/missing.ini"},
         "config file not found: {tmp}/missing.ini (from environment variable AUDIT_CONFIG)"),
        (["--config", "{tmp}/missing.ini", "run"], {},
         "config file not found: {tmp}/missing.ini (from --config)"),
        (["migrate"], {"AUDIT_DATABASE_PASSWORD": "x", "AUDIT_DATABASE_PASSWORD_FILE": "/x"},
         "set database_password or database_password_file, not both (database_password from "
         "environment variable AUDIT_DATABASE_PASSWORD; database_password_file from "
         "environment variable AUDIT_DATABASE_PASSWORD_FILE)"),
        (["--config", "{tmp}/password.ini", "migrate"], {},
         "cannot read database password file /nonexistent/pw: No such file or directory "
         "(database_password_file from config file {tmp}/password.ini, "
         "[audit] database_password_file)"),
    ],
)
def test_every_configuration_error_names_its_source(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str,
) -> None:
    (tmp_path / "batch.ini").write_text("[audit]\nbatch_size = 0\n")
    (tmp_path / "password.ini").write_text("[audit]\ndatabase_password_file = /nonexistent/pw\n")
    argv = [arg.format(tmp=tmp_path) for arg in args]
    environ = {key: value.format(tmp=tmp_path) for key, value in env.items()}
    result = CliRunner().invoke(main, argv, env=environ)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"audit-service: error: {expected.format(tmp=tmp_path)}"), \
        result.output
    assert result.output.count("\n") == 1, "one line, no traceback"
