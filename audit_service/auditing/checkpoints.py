"""`checkpoints list`: the signed checkpoints that audit_checkpoints holds, for people."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

from audit_service.core.encoding import b64encode
from audit_service.storage.reader import CheckpointRow


def checkpoint_json(row: CheckpointRow) -> dict[str, Any]:
    """One checkpoint as JSON, the whole signed note included."""
    return {"tenant_id": row.tenant_id, "tree_size": row.tree_size,
            "root_hash": b64encode(row.root_hash), "key_name": row.key_name,
            "created_at": row.created_at.astimezone(UTC).isoformat(), "note": row.note}


def render_checkpoints(rows: Sequence[CheckpointRow]) -> str:
    """A table, by tenant and tree size; roots in standard base64 as in the notes."""
    if not rows:
        return "no checkpoints"
    table = [["TENANT", "TREE SIZE", "ROOT", "KEY", "CREATED AT"]] + [
        [row.tenant_id, str(row.tree_size), b64encode(row.root_hash), row.key_name,
         row.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.rjust(width) if i == 1 else cell.ljust(width)
                  for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip()
        for line in table)
