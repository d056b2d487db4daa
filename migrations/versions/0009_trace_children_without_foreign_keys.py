"""Trace points and segments without per-row foreign key checks.

A trace's points and segments are written only by the ingest statement, in the
same transaction and statement as the trace row itself, so the per-row foreign
key check (one index probe through SPI for each of possibly a million points)
guards nothing the statement does not already guarantee; for a phone's
200-point upload it was a tenth of the whole ingest.  The cascade it provided
is kept by a set-based trigger (the primary keys of both tables lead with
``trace_id``, so it is an index scan): hard-deleting traces deletes their points and
segments in one statement.  ``trace_files`` keeps its foreign key (one row).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE trace_points DROP CONSTRAINT trace_points_trace_id_fkey;
        ALTER TABLE trace_segments DROP CONSTRAINT trace_segments_trace_id_fkey;

        CREATE FUNCTION makazi_trace_children_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM trace_points p USING old_rows o WHERE p.trace_id = o.id;
            DELETE FROM trace_segments s USING old_rows o WHERE s.trace_id = o.id;
            RETURN NULL;
        END
        $$;
        CREATE TRIGGER traces_children_delete AFTER DELETE ON traces
            REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
            EXECUTE FUNCTION makazi_trace_children_delete();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER traces_children_delete ON traces;
        DROP FUNCTION makazi_trace_children_delete();
        DELETE FROM trace_points p
            WHERE NOT EXISTS (SELECT 1 FROM traces t WHERE t.id = p.trace_id);
        DELETE FROM trace_segments s
            WHERE NOT EXISTS (SELECT 1 FROM traces t WHERE t.id = s.trace_id);
        ALTER TABLE trace_points ADD CONSTRAINT trace_points_trace_id_fkey
            FOREIGN KEY (trace_id) REFERENCES traces (id) ON DELETE CASCADE;
        ALTER TABLE trace_segments ADD CONSTRAINT trace_segments_trace_id_fkey
            FOREIGN KEY (trace_id) REFERENCES traces (id) ON DELETE CASCADE;
        """
    )
