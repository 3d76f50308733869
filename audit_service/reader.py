"""Read-only queries: what the verifier, the offset lookup and operator commands need.

It never imports the write path (store, batch): verifying a chain must not depend on the
code that wrote it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from audit_service.chain import ChainHead
from audit_service.db import translated_errors
from audit_service.models import AuditChainState, AuditConsumerOffset, AuditRecord
from audit_service.record_mapping import record_from_row

STREAM_CHUNK_ROWS = 2000
"""Rows fetched per round trip by the server-side cursor while streaming a chain."""


class AuditReader:
    """Read-only access to the audit store."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def stored_offsets(self, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """The next offset per partition as committed in the database."""
        with translated_errors("reading stored offsets"), Session(self.engine) as session:
            rows = session.execute(
                select(AuditConsumerOffset.partition, AuditConsumerOffset.next_offset).where(
                    AuditConsumerOffset.consumer_group == group,
                    AuditConsumerOffset.topic == topic,
                    AuditConsumerOffset.partition.in_(list(partitions)),
                )
            ).all()
        return {partition: offset for partition, offset in rows}

    def heads(self) -> dict[str, ChainHead]:
        """Every tenant's recorded head."""
        with translated_errors("reading chain heads"), Session(self.engine) as session:
            rows = session.execute(
                select(
                    AuditChainState.tenant_id,
                    AuditChainState.last_sequence,
                    AuditChainState.last_hash,
                ).order_by(AuditChainState.tenant_id)
            ).all()
        return {tenant: ChainHead(tenant, sequence, last) for tenant, sequence, last in rows}

    def tenants_with_records(self) -> list[str]:
        """Tenants that have records, whether or not they have a head (a lost head is a break)."""
        with translated_errors("listing tenants"), Session(self.engine) as session:
            return list(
                session.scalars(select(AuditRecord.tenant_id).distinct().order_by("tenant_id"))
            )

    def record_count(self, tenant_id: str | None = None) -> int:
        statement = select(func.count()).select_from(AuditRecord)
        if tenant_id is not None:
            statement = statement.where(AuditRecord.tenant_id == tenant_id)
        with translated_errors("counting records"), Session(self.engine) as session:
            return int(session.scalar(statement) or 0)

    def iter_records(self, tenant_id: str) -> Iterator[dict[str, Any]]:
        """One tenant's records in sequence order, streamed (constant memory)."""
        statement = (
            select(AuditRecord)
            .where(AuditRecord.tenant_id == tenant_id)
            .order_by(AuditRecord.sequence_number)
            .execution_options(yield_per=STREAM_CHUNK_ROWS)
        )
        with (
            translated_errors(f"reading records of tenant {tenant_id!r}"),
            Session(self.engine) as session,
        ):
            for row in session.scalars(statement):
                yield record_from_row(row)
                session.expunge(row)
