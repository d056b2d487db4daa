"""Households per structure counted with a plan that cannot go quadratic.

``makazi_count_households`` (0002) counted a structure's live households with
``WHERE structure_id = :id AND deleted_at IS NULL``.  When a bulk insert fills
an empty ``households`` table (a form export's repeat group), the trigger's plan
is made from the empty table's statistics and ANDs the structure index with the
partial ``households_review_state_idx`` (``WHERE deleted_at IS NULL``), which
reads every household for every structure: 33 s for 10,000 structures with
25,000 households.  Counting with ``count(*) FILTER (WHERE deleted_at IS NULL)``
leaves only ``structure_id`` to search on, so the structure index alone is used
whatever the statistics say, and each count is computed once (``OFFSET 0``).

Revision ID: 0019
Revises: 0017 (the lead rechains it on merge)
"""

from alembic import op

revision = "0019"
down_revision = "0017"
branch_labels = None
depends_on = None


def _function(count: str, fence: str) -> str:
    """The trigger function with ``count`` as the per-structure count."""
    branches = {
        "INSERT": "SELECT DISTINCT structure_id AS sid FROM new_rows",
        "UPDATE": (
            "SELECT structure_id AS sid FROM new_rows UNION SELECT structure_id FROM old_rows"
        ),
        "DELETE": "SELECT DISTINCT structure_id AS sid FROM old_rows",
    }
    body = "\n    ELS".join(
        f"""IF TG_OP = '{op_name}' THEN
        UPDATE structures s SET households = c.n
        FROM (SELECT ids.sid, ({count}) AS n
              FROM ({ids}) ids{fence}) c
        WHERE s.id = c.sid AND s.households IS DISTINCT FROM c.n;"""
        for op_name, ids in branches.items()
    )
    return f"""
CREATE OR REPLACE FUNCTION makazi_count_households() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {body}
    END IF;
    RETURN NULL;
END
$$;
"""


NEW = _function(
    "SELECT count(*) FILTER (WHERE h.deleted_at IS NULL) FROM households h "
    "WHERE h.structure_id = ids.sid",
    " OFFSET 0",
)
OLD = _function(
    "SELECT count(*) FROM households h WHERE h.structure_id = ids.sid AND h.deleted_at IS NULL",
    "",
)


def upgrade() -> None:
    op.execute(NEW)


def downgrade() -> None:
    op.execute(OLD)
