"""load_settings: defaults < ini [audit] < AUDIT_* environment < overrides, validated once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from audit_service.config import Settings, load_settings, setting_names
from audit_service.core.errors import AuditServiceError, ConfigurationError

PASSWORD = "s3cr3t-Pa55w0rd"
SECRET_URL = f"postgresql+psycopg2://auditor:{PASSWORD}@db.internal:5432/audit"


@pytest.fixture(autouse=True)
def _no_default_ini(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test where no ./audit.ini exists, so only what a test supplies is read."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)


def write_ini(directory: Path, body: str, name: str = "audit.ini") -> Path:
    path = directory / name
    path.write_text(body, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.database_url == "postgresql+psycopg2://postgres@127.0.0.1:5432/audit"
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka_topic == "audit.events"
    assert settings.consumer_group == "aluskort.audit-service"
    assert settings.batch_size == 2000
    assert settings.poll_timeout_ms == 500
    assert settings.max_event_bytes == 1_048_576
    assert settings.max_clock_skew_s == 86_400
    assert settings.health_host == "127.0.0.1"
    assert settings.health_port == 8040
    assert settings.liveness_timeout_s == 60.0
    assert settings.log_level == "INFO"


def test_setting_names_match_the_fields() -> None:
    names = setting_names()
    assert names == list(Settings.model_fields)
    assert names[0] == "database_url"
    assert {"batch_size", "kafka_topic", "health_port", "log_level"} <= set(names)


def test_ini_values_are_read(tmp_path: Path) -> None:
    path = write_ini(tmp_path, (
        "[audit]\n"
        "database_url = postgresql://audit@db.example:6543/trail\n"
        "kafka_topic = audit.events.staging\n"
        "batch_size = 250\n"
        "liveness_timeout_s = 12.5\n"
        "log_level = debug\n"
        "[alembic]\n"
        "script_location = %(here)s/alembic\n"
    ))
    settings = load_settings(config_path=str(path), environ={})
    assert settings.database_url == "postgresql+psycopg2://audit@db.example:6543/trail"
    assert settings.kafka_topic == "audit.events.staging"
    assert settings.batch_size == 250
    assert settings.liveness_timeout_s == 12.5
    assert settings.log_level == "DEBUG"
    # Keys absent from the file keep their defaults.
    assert settings.poll_timeout_ms == 500
    assert settings.health_port == 8040


def test_ini_without_an_audit_section_gives_defaults(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[alembic]\nscript_location = alembic\n")
    assert load_settings(config_path=str(path), environ={}) == Settings()


def test_shipped_audit_ini_is_valid() -> None:
    shipped = Path(__file__).resolve().parents[2] / "audit.ini"
    settings = load_settings(config_path=str(shipped), environ={})
    assert settings.kafka_topic == "audit.events"
    assert settings.health_port == 8040
    assert settings.consumer_group == "aluskort.audit-service"


def test_default_audit_ini_in_the_working_directory_is_used(tmp_path: Path) -> None:
    write_ini(Path.cwd(), "[audit]\nbatch_size = 77\n")
    assert load_settings(environ={}).batch_size == 77


def test_environment_overrides_ini(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[audit]\nbatch_size = 250\nkafka_topic = from-ini\n")
    environ = {"AUDIT_BATCH_SIZE": "300", "AUDIT_HEALTH_PORT": "9000", "UNRELATED": "x"}
    settings = load_settings(config_path=str(path), environ=environ)
    assert settings.batch_size == 300
    assert settings.health_port == 9000
    assert settings.kafka_topic == "from-ini"


def test_empty_environment_variable_is_ignored(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[audit]\nbatch_size = 250\n")
    settings = load_settings(config_path=str(path), environ={"AUDIT_BATCH_SIZE": ""})
    assert settings.batch_size == 250


def test_environment_names_need_the_prefix_and_upper_case() -> None:
    environ = {"BATCH_SIZE": "5", "audit_batch_size": "6"}
    assert load_settings(environ=environ).batch_size == 2000


def test_overrides_win_over_environment_and_ini(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[audit]\nbatch_size = 250\npoll_timeout_ms = 100\n")
    settings = load_settings(
        config_path=str(path),
        overrides={"batch_size": 400, "kafka_topic": "from-flag"},
        environ={"AUDIT_BATCH_SIZE": "300", "AUDIT_KAFKA_TOPIC": "from-env"},
    )
    assert settings.batch_size == 400
    assert settings.kafka_topic == "from-flag"
    assert settings.poll_timeout_ms == 100


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[audit]\nbatch_size = 250\n")
    settings = load_settings(
        config_path=str(path),
        overrides={"batch_size": None, "kafka_topic": None, "health_port": 0},
        environ={"AUDIT_KAFKA_TOPIC": "from-env"},
    )
    assert settings.batch_size == 250
    assert settings.kafka_topic == "from-env"
    assert settings.health_port == 0


def test_unknown_ini_key_is_rejected(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[audit]\nbatch_sise = 10\nkafka_topik = x\n")
    with pytest.raises(ConfigurationError) as info:
        load_settings(config_path=str(path), environ={})
    message = str(info.value)
    assert "batch_sise" in message
    assert "kafka_topik" in message
    assert "unknown" in message


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="batch_sise"):
        load_settings(overrides={"batch_sise": 5}, environ={})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", "0"),
        ("batch_size", "100001"),
        ("batch_size", "many"),
        ("batch_size", "2.5"),
        ("poll_timeout_ms", "0"),
        ("max_event_bytes", "1023"),
        ("max_clock_skew_s", "-1"),
        ("health_port", "65536"),
        ("health_port", "-1"),
        ("liveness_timeout_s", "0"),
        ("kafka_heartbeat_interval_ms", "99"),
        ("retry_max_backoff_s", "-3"),
        ("log_level", "verbose"),
        ("kafka_topic", "x" * 250),
    ],
)
def test_invalid_ini_value_names_the_field_and_file(tmp_path: Path, key: str, value: str) -> None:
    path = write_ini(tmp_path, f"[audit]\n{key} = {value}\n")
    with pytest.raises(ConfigurationError) as info:
        load_settings(config_path=str(path), environ={})
    message = str(info.value)
    assert f"invalid setting {key}" in message
    assert str(path) in message


def test_invalid_environment_value_names_the_field() -> None:
    with pytest.raises(ConfigurationError, match="invalid setting poll_timeout_ms"):
        load_settings(environ={"AUDIT_POLL_TIMEOUT_MS": "soon"})


def test_invalid_override_names_the_field() -> None:
    with pytest.raises(ConfigurationError, match="invalid setting health_port"):
        load_settings(overrides={"health_port": 70000}, environ={})


def test_empty_ini_value_is_invalid_for_a_number(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[audit]\nbatch_size =\n")
    with pytest.raises(ConfigurationError, match="batch_size"):
        load_settings(config_path=str(path), environ={})


def test_configuration_error_is_a_usage_error() -> None:
    with pytest.raises(AuditServiceError) as info:
        load_settings(overrides={"batch_size": 0}, environ={})
    assert isinstance(info.value, ConfigurationError)
    assert info.value.exit_code == 2


def test_missing_explicit_config_file_is_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ini"
    with pytest.raises(ConfigurationError, match="not found") as info:
        load_settings(config_path=str(missing), environ={})
    assert str(missing) in str(info.value)


def test_config_path_that_is_a_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        load_settings(config_path=str(tmp_path), environ={})


def test_malformed_ini_file_is_rejected(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "batch_size = 5\n[audit\n")
    with pytest.raises(ConfigurationError, match="not valid ini"):
        load_settings(config_path=str(path), environ={})


def test_audit_config_environment_variable_picks_the_file(tmp_path: Path) -> None:
    path = write_ini(tmp_path, "[audit]\nbatch_size = 42\n", name="other.ini")
    write_ini(Path.cwd(), "[audit]\nbatch_size = 77\n")  # ./audit.ini loses to AUDIT_CONFIG
    settings = load_settings(environ={"AUDIT_CONFIG": str(path)})
    assert settings.batch_size == 42


def test_explicit_config_path_wins_over_audit_config(tmp_path: Path) -> None:
    chosen = write_ini(tmp_path, "[audit]\nbatch_size = 11\n", name="chosen.ini")
    other = write_ini(tmp_path, "[audit]\nbatch_size = 22\n", name="other.ini")
    settings = load_settings(config_path=str(chosen), environ={"AUDIT_CONFIG": str(other)})
    assert settings.batch_size == 11


def test_missing_audit_config_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        load_settings(environ={"AUDIT_CONFIG": str(tmp_path / "missing.ini")})


def test_non_postgresql_url_is_rejected() -> None:
    """The other cases, and the exact message, are in test_database_urls.py."""
    with pytest.raises(ConfigurationError, match="invalid setting database_url"):
        load_settings(overrides={"database_url": "mysql://user@db/audit"}, environ={})


def test_password_never_appears_in_repr_or_str() -> None:
    settings = load_settings(environ={"AUDIT_DATABASE_URL": SECRET_URL})
    assert settings.database_url == SECRET_URL
    for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert PASSWORD not in text
        assert "db.internal" in text
        assert "***" in text


def test_redacted_database_url_masks_the_password() -> None:
    settings = load_settings(overrides={"database_url": SECRET_URL}, environ={})
    redacted = settings.redacted_database_url
    assert PASSWORD not in redacted
    assert redacted == "postgresql+psycopg2://auditor:***@db.internal:5432/audit"


def test_redacted_database_url_without_a_password_is_unchanged() -> None:
    settings = load_settings(environ={})
    assert settings.redacted_database_url == settings.database_url
    assert "***" not in settings.redacted_database_url


def test_password_is_not_leaked_by_a_rejected_url() -> None:
    url = f"mysql://auditor:{PASSWORD}@db.internal/audit"
    with pytest.raises(ConfigurationError) as info:
        load_settings(overrides={"database_url": url}, environ={})
    assert PASSWORD not in str(info.value)
    assert info.value.__cause__ is None


def test_password_is_not_leaked_when_another_setting_fails() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(overrides={"database_url": SECRET_URL, "batch_size": 0}, environ={})
    assert PASSWORD not in str(info.value)


def test_settings_are_frozen() -> None:
    settings = load_settings(environ={})
    with pytest.raises(ValidationError):
        settings.batch_size = 5  # type: ignore[misc]
    assert settings.batch_size == 2000


def test_settings_reject_unknown_fields_directly() -> None:
    with pytest.raises(ValidationError):
        Settings(batch_sise=5)  # type: ignore[call-arg]


def test_percent_encoded_password_is_redacted() -> None:
    settings = load_settings(
        overrides={"database_url": "postgresql://auditor:p%40ss-w0rd@db/audit"}, environ={}
    )
    assert "p%40ss-w0rd" not in repr(settings)
    assert "p@ss-w0rd" not in repr(settings)
    assert settings.redacted_database_url == "postgresql+psycopg2://auditor:***@db/audit"


def test_password_in_the_query_string_is_redacted() -> None:
    url = f"postgresql://auditor@db.internal/audit?password={PASSWORD}"
    settings = load_settings(overrides={"database_url": url}, environ={})
    assert PASSWORD not in settings.redacted_database_url
    assert PASSWORD not in repr(settings)
