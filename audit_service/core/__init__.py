"""The pure core: event validation, canonical JSON and hashing, chaining, record rendering.

Imports only the standard library, pydantic and other `audit_service.core` modules: no I/O.
"""
