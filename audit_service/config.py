"""One frozen, validated configuration built from ini < environment < CLI flags.

Every consumer of configuration (the daemon, the CLI commands, Alembic's env.py) calls
`load_settings`, so there is exactly one source of truth and one set of names: the ini key
`batch_size` in the `[audit]` section is the variable `AUDIT_BATCH_SIZE` and the field
`Settings.batch_size`.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from audit_service.core.checkpoint import CheckpointError, tenant_origin
from audit_service.core.errors import ConfigurationError
from audit_service.core.offset_policy import POLICIES as OFFSET_POLICIES
from audit_service.ops.logs import LOG_FORMATS

INI_SECTION = "audit"
DRIVER_SCHEME = "postgresql+psycopg2"
"""The design card's driver. A bare postgresql:// means psycopg2 to SQLAlchemy 2.0 but
psycopg 3 to 2.1, so every accepted form is pinned to it explicitly."""
ACCEPTED_SCHEMES = ("postgresql", "postgres", DRIVER_SCHEME)
ACCEPTED_URL_FORMS = (
    "postgresql://, postgres:// or postgresql+psycopg2:// "
    "(libpq query parameters such as ?host=/run/postgresql&sslmode=require are kept)"
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
ENV_PREFIX = "AUDIT_"
CONFIG_PATH_ENV = "AUDIT_CONFIG"
DEFAULT_CONFIG_FILE = "audit.ini"


class Settings(BaseModel):
    """Everything the service needs; validated before anything connects."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/audit"
    database_password: SecretStr | None = None
    database_password_file: str | None = None
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic: str = Field("audit.events", min_length=1, max_length=249)
    consumer_group: str = Field("aluskort.audit-service", min_length=1)
    batch_size: int = Field(2000, ge=1, le=100_000)
    poll_timeout_ms: int = Field(500, ge=1, le=60_000)
    validation_workers: int = Field(1, ge=0, le=3)
    """At most three batches are in flight, so a fourth worker would never get one."""
    max_event_bytes: int = Field(1_048_576, ge=1024)
    max_clock_skew_s: int = Field(86_400, ge=0)
    health_host: str = "127.0.0.1"
    health_port: int = Field(8040, ge=0, le=65_535)
    liveness_timeout_s: float = Field(60.0, gt=0)
    kafka_session_timeout_ms: int = Field(10_000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(3_000, ge=100)
    kafka_max_poll_interval_ms: int = Field(300_000, ge=1000)
    statement_timeout_ms: int = Field(60_000, ge=0)
    lock_timeout_ms: int = Field(5_000, ge=0)
    retry_max_backoff_s: float = Field(30.0, gt=0)
    log_level: str = "INFO"
    log_format: str = "auto"
    metrics_max_tenants: int = Field(500, ge=0, le=10_000)
    on_offset_out_of_range: str = "fail"
    kafka_partitions: tuple[int, ...] = ()
    checkpoint_key_file: str | None = None
    """Signer key (`audit-service keygen`); signed checkpoints are on when it is set."""
    checkpoint_dir: str | None = None
    """The external sink: one append-only JSON Lines file of checkpoints per tenant."""
    checkpoint_origin: str | None = None
    """First part of each checkpoint's origin line (`<origin>/<tenant>`); default: key name."""
    checkpoint_every_records: int = Field(1000, ge=1)
    checkpoint_every_s: float = Field(60.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _password_into_url(cls, data: Any) -> Any:
        """Put a password kept out of the URL (a file, or AUDIT_DATABASE_PASSWORD) into it.

        Secrets belong in a file only the service can read (or a systemd credential), not
        in the ini file or a URL that tools echo; merging here means every engine gets it
        and nothing else ever handles it. Errors never quote the password.
        """
        if not isinstance(data, dict):
            return data
        password, path = data.get("database_password"), data.get("database_password_file")
        if not password and not path:
            return data
        if password and path:
            raise SettingError("set database_password or database_password_file, not both",
                               ("database_password", "database_password_file"))
        if path:
            password = _read_password_file(str(path))
        if isinstance(password, SecretStr):
            password = password.get_secret_value()
        try:
            url = make_url(data.get("database_url", cls.model_fields["database_url"].default))
        except (ArgumentError, ValueError):
            return data  # _valid_database_url reports it
        if url.password is not None and url.password != password:
            raise SettingError(
                "database_url contains a different password; give it in one place only",
                ("database_url", "database_password_file" if path else "database_password"))
        merged = url.set(password=password).render_as_string(hide_password=False)
        return {**data, "database_url": merged}

    @model_validator(mode="after")
    def _checkpoint_sink_with_key(self) -> Settings:
        """Signing without somewhere outside the database to keep the signatures would
        protect nothing: the key needs the sink."""
        if self.checkpoint_key_file and not self.checkpoint_dir:
            raise SettingError("checkpoint_key_file is set but checkpoint_dir is not",
                               ("checkpoint_key_file", "checkpoint_dir"))
        if self.checkpoint_origin is not None:
            try:
                tenant_origin(self.checkpoint_origin, "t")
            except CheckpointError as exc:
                raise SettingError(str(exc), ("checkpoint_origin",)) from None
        return self

    @field_validator("database_url")
    @classmethod
    def _valid_database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("log_level")
    @classmethod
    def _valid_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("on_offset_out_of_range")
    @classmethod
    def _valid_offset_policy(cls, value: str) -> str:
        policy = value.lower()
        if policy not in OFFSET_POLICIES:
            raise ValueError(f"must be one of {', '.join(OFFSET_POLICIES)}")
        return policy

    @field_validator("kafka_partitions", mode="before")
    @classmethod
    def _partition_list(cls, value: Any) -> Any:
        """ini and environment give "0,2"; empty means: join the consumer group."""
        if isinstance(value, str):
            try:
                value = tuple(int(part) for part in value.split(",") if part.strip())
            except ValueError:
                raise ValueError("must be comma-separated partition numbers") from None
        if any(not isinstance(p, int) or p < 0 for p in value):
            raise ValueError("partition numbers must be >= 0")
        if len(set(value)) != len(value):
            raise ValueError("partition numbers must not repeat")
        return tuple(sorted(value))

    @field_validator("log_format")
    @classmethod
    def _valid_log_format(cls, value: str) -> str:
        log_format = value.lower()
        if log_format not in LOG_FORMATS:
            raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
        return log_format

    @property
    def redacted_database_url(self) -> str:
        """The database URL with any password masked, safe for logs and output."""
        url = make_url(self.database_url)
        if "password" in url.query:
            url = url.update_query_dict({"password": "***"})
        return url.render_as_string(hide_password=True)

    def redacted_values(self) -> dict[str, Any]:
        """Every setting in effect, with the database password masked (for printing)."""
        values = dict(self)
        values["database_url"] = self.redacted_database_url
        return values

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (self.redacted_database_url if name == "database_url" else value)


class SettingError(ConfigurationError):
    """A bad value of `fields`; load_settings adds where each of them came from."""

    def __init__(self, message: str, fields: tuple[str, ...]):
        super().__init__(message)
        self.fields = fields


def normalise_database_url(value: str) -> str:
    """`value` with its scheme pinned to postgresql+psycopg2://, everything else as written.

    Operators and libpq tools write postgresql:// or postgres:// (which SQLAlchemy maps to
    whatever driver its version prefers, or rejects); only the scheme is rewritten, so the
    host, credentials and libpq query parameters reach psycopg2 untouched. The message of
    a rejected URL never quotes more than its scheme: the rest may hold a password.
    """
    scheme, separator, rest = value.partition("://")
    if not separator or not _SCHEME.fullmatch(scheme):
        raise ValueError(f"not a database URL; use {ACCEPTED_URL_FORMS}")
    if scheme.lower() not in ACCEPTED_SCHEMES:
        raise ValueError(f"unsupported scheme {scheme}://; use {ACCEPTED_URL_FORMS}")
    normalised = f"{DRIVER_SCHEME}://{rest}"
    try:
        make_url(normalised)
    except (ArgumentError, ValueError):
        raise ValueError(f"not a valid database URL; use {ACCEPTED_URL_FORMS}") from None
    return normalised


def _read_password_file(path: str) -> str:
    """The password in `path`, without the line ending editors and `echo` leave behind."""
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.read().rstrip("\r\n")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SettingError(f"cannot read database password file {path}: {reason}",
                           ("database_password_file",)) from None
    except UnicodeDecodeError:
        raise SettingError(f"database password file {path} is not UTF-8",
                           ("database_password_file",)) from None
    if not password:
        raise SettingError(f"database password file {path} is empty",
                           ("database_password_file",))
    return password


def setting_names() -> list[str]:
    """All setting names, in declaration order (for docs and `--help`)."""
    return list(Settings.model_fields)


def _ini_values(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc.strerror}") from exc
    except configparser.Error as exc:
        raise ConfigurationError(f"config file {path} is not valid ini: {exc}") from exc
    if not parser.has_section(INI_SECTION):
        return {}
    values = dict(parser.items(INI_SECTION))
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise ConfigurationError(f"config file {path}: unknown key(s) in [audit]: {unknown}")
    return values


def _env_values(environ: Mapping[str, str]) -> dict[str, str]:
    values = {}
    for name in Settings.model_fields:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ and environ[env_name] != "":
            values[name] = environ[env_name]
    return values


def resolve_config_path(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """`--config` wins, then AUDIT_CONFIG, then ./audit.ini when it exists."""
    chosen = explicit or environ.get(CONFIG_PATH_ENV)
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            source = "--config" if explicit else f"environment variable {CONFIG_PATH_ENV}"
            raise ConfigurationError(f"config file not found: {path} (from {source})")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(
    config_path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from ini < environment < `overrides` (CLI flags; None values ignored).

    A bad value is reported with where it came from (the ini file and key, the environment
    variable, or the flag named in `flag_names`), so the operator edits the right place.
    """
    environ = os.environ if environ is None else environ
    path = resolve_config_path(config_path, environ)
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in (_ini_values(path) if path else {}).items():
        raw[key], sources[key] = value, f"config file {path}, [{INI_SECTION}] {key}"
    for key, value in _env_values(environ).items():
        raw[key], sources[key] = value, f"environment variable {ENV_PREFIX}{key.upper()}"
    for key, value in (overrides or {}).items():
        if value is not None:
            flag = (flag_names or {}).get(key)
            raw[key] = value
            sources[key] = f"command-line flag {flag}" if flag else f"override {key}"
    try:
        return Settings(**raw)
    except SettingError as exc:
        origins = "; ".join(f"{field} from {sources.get(field, 'the default')}"
                            for field in exc.fields)
        raise ConfigurationError(f"{exc} ({origins})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "configuration"
        source = sources.get(str(first["loc"][0]) if first["loc"] else "", "the default")
        cause = first.get("ctx", {}).get("error")
        reason = str(cause) if first["type"] == "value_error" and cause else first["msg"]
        raise ConfigurationError(f"invalid setting {field} (from {source}): {reason}") from None
