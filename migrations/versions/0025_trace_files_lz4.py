"""Uploaded GPX bytes compressed with lz4 rather than pglz when stored.

``trace_files.content`` keeps every upload's original bytes.  PostgreSQL
compresses a large value when it moves it to TOAST; with the default pglz
that is the slowest step of storing a big upload (116 MB of GPX: 1.9-2.9 s
against 1.0-1.1 s with lz4, measured on the bench database), for a value
about a fifth larger (22.7 MB against 18.8 MB).  The bytes read back are the
same.  Rows stored before keep their compression.  A server built without
lz4 keeps pglz (the migration says so and goes on).

Revision ID: 0025
Revises: 0024
"""

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            ALTER TABLE trace_files ALTER COLUMN content SET COMPRESSION lz4;
        EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
            RAISE NOTICE 'no lz4 in this PostgreSQL: trace_files keeps pglz';
        END
        $$;
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE trace_files ALTER COLUMN content SET COMPRESSION pglz")
