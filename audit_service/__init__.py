"""audit-service: a tamper-evident, per-tenant SHA-256 chained audit trail."""

__version__ = "0.1.0"
