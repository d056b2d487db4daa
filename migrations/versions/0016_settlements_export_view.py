"""``settlements_export``: settlements with their reported profile, as exports read them.

A view rather than a join in every export format: each format reads a table's
columns by name, and this one has the settlement's columns plus ``profile``
(the stored Know Your City fields as JSON text; null before anyone wrote one).
``s.*`` is expanded when the view is made, so a migration that adds a column to
``settlements`` recreates this view (the export tests fail until it does).

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

VIEW = """
CREATE VIEW settlements_export AS
SELECT s.*, p.fields::text AS profile
FROM settlements s
LEFT JOIN settlement_profiles p ON p.settlement_id = s.id AND p.deleted_at IS NULL
"""


def upgrade() -> None:
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW settlements_export")
