"""Verify chains stored in PostgreSQL: every record, every link, and each tenant's head."""

from __future__ import annotations

from collections.abc import Iterator

from audit_service.chain import ChainHead, VerificationResult, verify_chain
from audit_service.reader import AuditReader


def verify_database(
    reader: AuditReader, tenant_id: str | None = None
) -> Iterator[VerificationResult]:
    """Yield one result per tenant (or just `tenant_id`), checking records against heads.

    Tenants are the union of those with a head and those with records, so a chain whose
    head row vanished, or a head whose records vanished, is reported rather than skipped.
    """
    heads = reader.heads()
    tenants = sorted(set(heads) | set(reader.tenants_with_records()))
    if tenant_id is not None:
        tenants = [tenant_id]
    for tenant in tenants:
        head = heads.get(tenant, ChainHead.empty(tenant))
        yield verify_chain(tenant, reader.iter_records(tenant), expected_head=head)
