"""Tell listening app processes when a layer's tile counter moves.

The bump that migration 0007 makes at commit now also sends
``NOTIFY makazi_tile_changes, '<collection> <counter>'``.  PostgreSQL delivers
it when the transaction commits, so a process that listens knows the counters
without asking the database on every tile request.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BUMP = """
CREATE OR REPLACE FUNCTION makazi_tiles_bump() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
BEGIN
    PERFORM set_config('makazi.tiles_pending_' || NEW.collection, '', true);
    UPDATE tile_changes SET counter = counter + 1, changed_at = now()
    WHERE collection = NEW.collection
    RETURNING counter INTO moved;
    DELETE FROM tile_changes_pending WHERE id = NEW.id;
    {notify}
    RETURN NULL;
END
$$;
"""


def upgrade() -> None:
    op.execute(
        BUMP.replace(
            "{notify}",
            "PERFORM pg_notify('makazi_tile_changes', NEW.collection || ' ' || moved);",
        )
    )


def downgrade() -> None:
    op.execute(BUMP.replace("{notify}", ""))
