"""The database password kept out of the URL: from a file or AUDIT_DATABASE_PASSWORD,
merged into the URL for the engines, masked everywhere it could be printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from audit_service.config import load_settings
from audit_service.core.errors import ConfigurationError

URL = "postgresql+psycopg2://audit_writer@db.internal:5432/audit"
PASSWORD = "p@ss:w/rd%?#'x"
"""Every URL metacharacter: it must be escaped in the URL and come back intact."""


def _password_file(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "db-password"
    path.write_text(content, encoding="utf-8")
    return path


def test_the_password_file_completes_the_url(tmp_path: Path) -> None:
    path = _password_file(tmp_path, PASSWORD + "\n")
    settings = load_settings(environ={"AUDIT_DATABASE_URL": URL,
                                      "AUDIT_DATABASE_PASSWORD_FILE": str(path)})
    url = make_url(settings.database_url)
    assert (url.username, url.password, url.host) == ("audit_writer", PASSWORD, "db.internal")
    assert settings.database_password_file == str(path)


def test_the_password_file_can_be_named_in_the_ini_file(tmp_path: Path) -> None:
    path = _password_file(tmp_path, PASSWORD)
    ini = tmp_path / "audit.ini"
    ini.write_text(f"[audit]\ndatabase_url = {URL}\ndatabase_password_file = {path}\n")
    settings = load_settings(config_path=str(ini), environ={})
    assert make_url(settings.database_url).password == PASSWORD


def test_the_password_from_the_environment_completes_the_url() -> None:
    settings = load_settings(environ={"AUDIT_DATABASE_URL": URL,
                                      "AUDIT_DATABASE_PASSWORD": PASSWORD})
    assert make_url(settings.database_url).password == PASSWORD


def test_the_password_is_masked_wherever_settings_are_shown(tmp_path: Path) -> None:
    settings = load_settings(environ={"AUDIT_DATABASE_URL": URL,
                                      "AUDIT_DATABASE_PASSWORD": PASSWORD})
    shown = [repr(settings), str(settings), settings.redacted_database_url,
             *(f"{name} = {value}" for name, value in settings.redacted_values().items())]
    escaped = make_url(settings.database_url).render_as_string(hide_password=False)
    for text in shown:
        assert PASSWORD not in text and escaped not in text, text
    assert settings.redacted_database_url == "postgresql+psycopg2://audit_writer:***@db.internal:5432/audit"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"AUDIT_DATABASE_PASSWORD": "a", "AUDIT_DATABASE_PASSWORD_FILE": "/x"},
         "set database_password or database_password_file, not both (database_password from "
         "environment variable AUDIT_DATABASE_PASSWORD; database_password_file from "
         "environment variable AUDIT_DATABASE_PASSWORD_FILE)"),
        ({"AUDIT_DATABASE_URL": "postgresql://u:other@db/audit", "AUDIT_DATABASE_PASSWORD": "a"},
         "database_url contains a different password; give it in one place only (database_url "
         "from environment variable AUDIT_DATABASE_URL; database_password from environment "
         "variable AUDIT_DATABASE_PASSWORD)"),
        ({"AUDIT_DATABASE_PASSWORD_FILE": "/nonexistent/db-password"},
         "cannot read database password file /nonexistent/db-password: No such file or directory"
         " (database_password_file from environment variable AUDIT_DATABASE_PASSWORD_FILE)"),
    ],
)
def test_conflicting_or_missing_passwords_are_configuration_errors(
    environ: dict[str, str], message: str,
) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ=environ)
    assert str(info.value) == message
    assert "other" not in str(info.value)


def test_the_same_password_in_the_url_and_the_environment_is_accepted() -> None:
    settings = load_settings(environ={"AUDIT_DATABASE_URL": "postgresql://u:same@db/audit",
                                      "AUDIT_DATABASE_PASSWORD": "same"})
    assert make_url(settings.database_url).password == "same"


@pytest.mark.parametrize(("content", "reason"), [
    (None, "Is a directory"), ("\n", "is empty"), (b"\xff\xfe", "is not UTF-8"),
])
def test_an_unusable_password_file_says_why(
    tmp_path: Path, content: str | bytes | None, reason: str,
) -> None:
    path = tmp_path / "db-password"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match=reason) as info:
        load_settings(environ={"AUDIT_DATABASE_PASSWORD_FILE": str(path)})
    assert str(path) in str(info.value)
