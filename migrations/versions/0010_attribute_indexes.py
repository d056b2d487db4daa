"""B-tree indexes on the attributes people filter by most.

Planners and the map ask for structures by use ("every school", "toilets in
Mathare") and for facilities by type; without an index such a filter reads the
whole layer.  Partial like the spatial indexes: only live rows.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE INDEX structures_use_idx ON structures (use, id) WHERE deleted_at IS NULL;
        CREATE INDEX facilities_type_idx ON facilities (type, id) WHERE deleted_at IS NULL;
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX structures_use_idx; DROP INDEX facilities_type_idx;")
