"""A change counter for households, so cached analysis answers know when they are stale.

The per-process answer cache (:mod:`geo.core.answers`) files a settlement
summary or an access analysis under the change counters of the layers they
read.  Settlements, structures and facilities have counters in
``tile_changes`` (0007); households had none, since tiles draw only a
structure's household count.  This adds a ``households`` row and the same
statement triggers as the other layers (``makazi_tiles_note``): a write to
``households`` (members, review state, anything) bumps the counter once, at
commit, together with the data.  Tiles and item pages never read this row.

Revision ID: 0023
Revises: 0019 (the lead rechains it on merge)
"""

from alembic import op

revision = "0023"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        INSERT INTO tile_changes (collection) VALUES ('households')
            ON CONFLICT (collection) DO NOTHING;
        CREATE TRIGGER households_tiles_note AFTER INSERT OR UPDATE OR DELETE ON households
            FOR EACH STATEMENT EXECUTE FUNCTION makazi_tiles_note();
        CREATE TRIGGER households_tiles_truncate AFTER TRUNCATE ON households
            FOR EACH STATEMENT EXECUTE FUNCTION makazi_tiles_note();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER IF EXISTS households_tiles_note ON households;
        DROP TRIGGER IF EXISTS households_tiles_truncate ON households;
        DELETE FROM tile_changes WHERE collection = 'households';
        """
    )
