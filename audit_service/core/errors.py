"""The exception tree the CLI maps to exit codes (0 ok, 1 integrity failure, 2 usage/config).

Driver exceptions (psycopg2, SQLAlchemy, kafka-python) are translated into these at the
module boundary that talks to the driver, so nothing above it sees a driver type.
"""


class AuditServiceError(Exception):
    """Root of every error this service raises on purpose."""

    exit_code = 2


class ConfigurationError(AuditServiceError):
    """The configuration is invalid or incomplete; nothing was connected."""


class ConnectionFailure(AuditServiceError):
    """A required service (PostgreSQL or Kafka) could not be reached."""


class SchemaNotCurrentError(AuditServiceError):
    """The database schema is not at the Alembic head this code expects."""


class TransientError(AuditServiceError):
    """A failure worth retrying: database restart, deadlock, serialization failure, broker."""


class IntegrityFailure(AuditServiceError):
    """A chain was found broken (the evidence is in the message)."""

    exit_code = 1
