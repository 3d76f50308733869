"""Auditor and operator tools (verify, export, offline verify, status, rejects): they read,
never write. May import `core`, the read-only `storage.reader`, `broker.topic`; never `ingest`.
"""
